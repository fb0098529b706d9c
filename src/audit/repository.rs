//! Third sink: AuditEvents POSTed to a FHIR audit repository (`[base]/AuditEvent`,
//! a plain create), through a durable local spool.
//!
//! The writer thread puts each event in the spool folder — one file per event, written,
//! synced, renamed into place, then the folder synced — before the batch's records are
//! acknowledged; so an event the gateway answered for survives a crash and a repository
//! outage. A sender task takes the files oldest first, one at a time, and deletes a file
//! only once the repository accepted it (2xx): events arrive in order, and a repository
//! that is down or answers 5xx/429/408 just holds the queue (retried with backoff) until it
//! recovers; so does 401/403/404 (access or address wrong for now). 400, 409, 412, 413 or
//! 422 mean the repository will never take that event: it is moved to `spool/rejected/`
//! (and counted) so one bad event cannot block the rest.
//!
//! The spool is bounded (`spool_max` events). When it is full new events are not spooled:
//! counted in `ward_audit_repository_total{result="dropped"}` and logged once per episode;
//! the chained file still has every record. A repository that accepts an event but whose
//! answer is lost gets it again on retry (at-least-once on that one edge).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::primitives::Dur;

fn default_spool_max() -> usize {
    100_000
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `audit.repository`: a FHIR server that stores AuditEvents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// FHIR base URL; events are POSTed to `<url>/AuditEvent`. `https` (with `ca`), or
    /// `http` to a loopback address only.
    pub url: String,
    /// CA bundle for the repository's certificate (https).
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Folder holding events not yet accepted by the repository.
    pub spool: String,
    /// Most events the spool holds; beyond it new events are dropped (counted, logged).
    #[serde(default = "default_spool_max")]
    pub spool_max: usize,
    /// Time allowed for one POST.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

impl RepositoryConfig {
    /// (key under `repository.`, message) for `ward check`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.url.parse::<http::Uri>() {
            Ok(u) => {
                let host = u.host().unwrap_or_default().trim_matches(['[', ']']);
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                match u.scheme_str() {
                    Some("https") if self.ca.is_none() => out.push((
                        "repository.ca",
                        "an https repository needs `ca` (the CA of its certificate)".to_owned(),
                    )),
                    Some("https") => {}
                    Some("http") if loopback => {}
                    Some("http") => out.push((
                        "repository.url",
                        "plain http only to a loopback address; use https".to_owned(),
                    )),
                    _ => out.push((
                        "repository.url",
                        "must be an http(s) URL of a FHIR base".to_owned(),
                    )),
                }
                if u.query().is_some() {
                    out.push(("repository.url", "must not have a query".to_owned()));
                }
            }
            Err(_) => out.push((
                "repository.url",
                "must be an http(s) URL of a FHIR base".to_owned(),
            )),
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            out.push((
                "repository.client_cert",
                "client_cert and client_key go together".to_owned(),
            ));
        }
        if self.spool_max == 0 {
            out.push(("repository.spool_max", "must be greater than 0".to_owned()));
        }
        if self.timeout.0.is_zero() {
            out.push(("repository.timeout", "must be greater than 0".to_owned()));
        }
        out
    }
}

/// The writer thread's end: puts events in the spool and wakes the sender.
pub(super) struct Spool {
    dir: PathBuf,
    max: usize,
    next: u64,
    gauge: prometheus::IntGauge,
    dropped: prometheus::IntCounter,
    /// Wakes the sender (a full channel means a wake-up is pending already). Dropped with
    /// the writer, which ends the sender.
    wake: mpsc::Sender<()>,
    /// Logged once per full (or failing) episode, not once per event.
    complaining: bool,
}

const SUFFIX: &str = ".json";

/// Spooled event files, oldest first (names are zero-padded counters).
fn spooled(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(SUFFIX))
                        .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn counter_of(p: &Path) -> u64 {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(SUFFIX))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Spool {
    /// Put a batch's events in the spool, durably; returns once they are on disk.
    pub(super) fn put(&mut self, events: &[Vec<u8>]) {
        if events.is_empty() {
            return;
        }
        let mut written = 0usize;
        let mut problem: Option<String> = None;
        for ev in events {
            if usize::try_from(self.gauge.get()).unwrap_or(0) >= self.max {
                problem = Some(format!(
                    "spool full ({} events); new AuditEvents are not spooled",
                    self.max
                ));
                self.dropped.inc();
                continue;
            }
            self.next += 1;
            let name = format!("{:020}{SUFFIX}", self.next);
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let mut open = OpenOptions::new();
            open.create(true).write(true).truncate(true);
            // Events hold who read what (and the base64 query): owner only.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let result = open
                .open(&tmp)
                .and_then(|mut f| {
                    f.write_all(ev)?;
                    f.sync_data()
                })
                .and_then(|()| std::fs::rename(&tmp, self.dir.join(&name)));
            match result {
                Ok(()) => {
                    written += 1;
                    self.gauge.inc();
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    problem = Some(format!("spool write failed: {e}"));
                    self.dropped.inc();
                }
            }
        }
        // The renames are durable once the folder is synced.
        if written > 0 {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                problem = Some(format!("spool folder sync failed: {e}"));
            }
            let _ = self.wake.try_send(());
        }
        match problem {
            Some(p) if !self.complaining => {
                self.complaining = true;
                tracing::error!(spool = %self.dir.display(), problem = %p, "audit repository: AuditEvents dropped (the chained file keeps the records)");
            }
            None if self.complaining => {
                self.complaining = false;
                tracing::info!(spool = %self.dir.display(), "audit repository spool accepting again");
            }
            _ => {}
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Open the spool (replaying what an earlier run left) and start the sender task.
pub(super) fn start(
    cfg: &RepositoryConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
    metrics: &crate::metrics::Metrics,
) -> Result<Spool, String> {
    let dir = resolve(&cfg.spool);
    std::fs::create_dir_all(dir.join("rejected"))
        .map_err(|e| format!("audit spool {}: {e}", dir.display()))?;
    let existing = spooled(&dir);
    let next = existing.last().map_or(0, |p| counter_of(p));
    let gauge = metrics.audit_spool.clone();
    gauge.set(i64::try_from(existing.len()).unwrap_or(i64::MAX));

    let uri: http::Uri = format!("{}/AuditEvent", cfg.url.trim_end_matches('/'))
        .parse()
        .map_err(|_| "audit repository: invalid url".to_owned())?;
    let tls = match &cfg.ca {
        Some(ca) => {
            let client = match (&cfg.client_cert, &cfg.client_key) {
                (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
                _ => None,
            };
            crate::tls::upstream_client_config(
                &resolve(ca),
                client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
            .map_err(|e| format!("audit repository: {e}"))?
        }
        // Plain http (loopback only, checked by `ward check`): the TLS config is unused.
        None => rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.timeout.0));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: HttpsClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);

    let (wake, woken) = mpsc::channel(1);
    let sender = Sender {
        dir: dir.clone(),
        uri,
        client,
        timeout: cfg.timeout.0,
        gauge: gauge.clone(),
        sent: metrics.audit_repository.with_label_values(&["sent"]),
        errors: metrics.audit_repository.with_label_values(&["error"]),
        rejected: metrics.audit_repository.with_label_values(&["rejected"]),
    };
    tokio::spawn(sender.run(woken));
    Ok(Spool {
        dir,
        max: cfg.spool_max,
        next,
        gauge,
        dropped: metrics.audit_repository.with_label_values(&["dropped"]),
        wake,
        complaining: false,
    })
}

struct Sender {
    dir: PathBuf,
    uri: http::Uri,
    client: HttpsClient,
    timeout: Duration,
    gauge: prometheus::IntGauge,
    sent: prometheus::IntCounter,
    errors: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
}

enum Posted {
    Accepted,
    /// The repository will never take it (400, 409, 412, 413, 422).
    Refused(u16),
    Retry,
}

impl Sender {
    async fn run(self, mut woken: mpsc::Receiver<()>) {
        loop {
            let files = spooled(&self.dir);
            if files.is_empty() {
                // A wake-up sent by a `put` since the listing makes this return at once;
                // none left and the writer gone: this sink is over.
                if woken.recv().await.is_none() {
                    return;
                }
                continue;
            }
            for file in files {
                // A gateway restarted in the same process has its own sender on the same
                // spool: the old one stops rather than deliver twice.
                if woken.is_closed() {
                    return;
                }
                self.deliver(&file, &woken).await;
            }
        }
    }

    /// Deliver one spooled event, retrying until the repository settles it.
    async fn deliver(&self, file: &Path, woken: &mpsc::Receiver<()>) {
        let Ok(body) = tokio::fs::read(file).await else {
            // Vanished or unreadable: nothing to send; the next listing tells.
            return;
        };
        let body = Bytes::from(body);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.post(body.clone()).await {
                Posted::Accepted => {
                    if tokio::fs::remove_file(file).await.is_ok() {
                        self.gauge.dec();
                    }
                    self.sent.inc();
                    return;
                }
                Posted::Refused(status) => {
                    let to = self
                        .dir
                        .join("rejected")
                        .join(file.file_name().unwrap_or_default());
                    if tokio::fs::rename(file, &to).await.is_ok() {
                        self.gauge.dec();
                    }
                    self.rejected.inc();
                    tracing::error!(status, file = %to.display(), "audit repository refused an AuditEvent; kept in spool/rejected");
                    return;
                }
                Posted::Retry if woken.is_closed() => return,
                Posted::Retry => {
                    self.errors.inc();
                    if backoff == Duration::from_millis(100) {
                        tracing::warn!(spooled = self.gauge.get(), "audit repository unavailable; AuditEvents wait in the spool and are retried");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn post(&self, body: Bytes) -> Posted {
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/fhir+json")
            .header(http::header::ACCEPT, "application/fhir+json")
            .body(Full::new(body));
        let Ok(req) = req else {
            return Posted::Retry;
        };
        let answer = tokio::time::timeout(self.timeout, async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status();
            // Read the answer to the end so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Some(status)
        })
        .await;
        match answer {
            Ok(Some(s)) if s.is_success() => Posted::Accepted,
            // The event itself is refused (invalid, too large, a conflict): retrying the
            // same bytes cannot help. Other 4xx (401, 403, 404, 408, 429…) say the
            // repository or our access to it is wrong for now: hold the queue.
            Ok(Some(s)) if matches!(s.as_u16(), 400 | 409 | 412 | 413 | 422) => {
                Posted::Refused(s.as_u16())
            }
            _ => Posted::Retry,
        }
    }
}
