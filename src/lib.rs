//! Ward: a hardened HL7/FHIR gateway.
//!
//! [`Gateway::start`] boots every listener, the admin listener and the upstream health
//! probes from a validated [`config::Config`]; tests boot it in-process on `127.0.0.1:0`
//! and read the bound addresses back. See `stack.rs` for the order of every step a
//! request takes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod calendar;
pub mod config;
pub mod conn_guard;
pub mod context;
pub mod demo;
pub mod dlp;
pub mod doctor;
pub mod error;
pub mod fhir;
pub mod hl7v2;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod mllp;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod router;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stack;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::ListenerCtx;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type inside the gateway, both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty_body() -> Body {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A running gateway.
pub struct Gateway {
    listeners: HashMap<String, SocketAddr>,
    admin: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    pub metrics: Arc<Metrics>,
    reloaders: Arc<Vec<TlsReloader>>,
    _watcher: Option<notify::RecommendedWatcher>,
    _config_watcher: Option<notify::RecommendedWatcher>,
    live: Arc<Live>,
}

/// What a config reload swaps, and what it must leave alone.
struct Live {
    source: std::path::PathBuf,
    /// `reload::restart_only` of the running config.
    fixed: String,
    ctxs: Vec<Arc<ListenerCtx>>,
    admin: Arc<admin::AdminState>,
    current: std::sync::Mutex<reload::Generation>,
    /// The running config, for telling a file rewritten unchanged from a real change.
    running: std::sync::Mutex<String>,
    audit: Option<audit::AuditLog>,
    respond: Option<Arc<respond::Respond>>,
    shutdown: watch::Receiver<bool>,
}

impl Live {
    /// Load the config file again and, if all of it is valid and builds, serve it.
    /// `force` rebuilds even an unchanged config (SIGHUP: key and CA files it names may
    /// have changed); a file-change reload of an identical config keeps the running
    /// generation, rate-limit buckets included.
    async fn reload(
        self: &Arc<Self>,
        metrics: &Arc<Metrics>,
        force: bool,
    ) -> Result<(), Vec<String>> {
        // Loading YAML, reading keys and compiling profiles block: off the runtime's
        // workers. A panic in there is a refused reload, never a dead reload path.
        let (live, m) = (self.clone(), metrics.clone());
        let result = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| live.try_reload(&m, force)))
                .unwrap_or_else(|_| {
                    Err(vec![
                        "config reload failed unexpectedly (panic); previous config kept"
                            .to_owned(),
                    ])
                })
        })
        .await
        .unwrap_or_else(|_| Err(vec!["config reload task failed".to_owned()]));
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics.config_reloads.with_label_values(&[label]).inc();
        if result.is_ok() {
            tracing::info!(config = %self.source.display(), "config reloaded");
        }
        result
    }

    fn try_reload(&self, metrics: &Arc<Metrics>, force: bool) -> Result<(), Vec<String>> {
        let cfg = config::load(&self.source)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let text = format!("{cfg:?}");
        if !force && self.running.lock().is_ok_and(|r| *r == text) {
            return Ok(());
        }
        if reload::restart_only(&cfg) != self.fixed {
            return Err(vec![
                "listeners, mllp, admin, audit, log or shutdown_grace changed: these need a restart".into(),
            ]);
        }
        // One reload at a time; the lock is held while the new generation is built so
        // that two reloads cannot interleave their swaps.
        // A panic while building (caught by `reload`) leaves the lock poisoned but the
        // generation inside intact: it is only replaced after a successful build.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = reload::build(
            &cfg,
            metrics,
            self.audit.clone(),
            self.respond.clone(),
            &self.shutdown,
            Some(&*current),
        )
        .map_err(|e| vec![e])?;
        for ctx in &self.ctxs {
            let router = next
                .routers
                .remove(ctx.name.as_ref())
                .unwrap_or_else(|| Router::new(Vec::new()));
            ctx.router.store(Arc::new(router));
        }
        self.admin.upstreams.store(Arc::new(next.upstreams.clone()));
        let old = std::mem::replace(&mut *current, next);
        old.retire();
        if let Ok(mut r) = self.running.lock() {
            *r = text;
        }
        Ok(())
    }
}

/// Rebuilds one listener's TLS config from its files (certificates, client CAs, CRLs) and
/// swaps it in; new connections use the new one. On error the last good config stays.
struct TlsReloader {
    listener: String,
    tls: config::TlsConfig,
    base: std::path::PathBuf,
    swap: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    /// Bumped on every successful reload; connections made under an older one carry a
    /// client identity that was verified against superseded CAs/CRLs.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// MLLP listeners offer no ALPN (HTTP's h2/http1.1 would be a lie).
    mllp: bool,
    /// SHA-256 over the client CA and CRL files as last loaded.
    trust: std::sync::Mutex<Option<[u8; 32]>>,
}

/// A listener's TLS: the swappable server config, and its reloader (pushed to
/// `reloaders`). `None` for a plaintext listener (warned about).
fn bind_tls(
    name: &str,
    tls: Option<&config::TlsConfig>,
    cfg: &Config,
    mllp: bool,
    generation: &Arc<std::sync::atomic::AtomicU64>,
    metrics: &Metrics,
    reloaders: &mut Vec<TlsReloader>,
) -> anyhow::Result<Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>> {
    let Some(t) = tls else {
        tracing::warn!(listener = %name, mllp, "plaintext listener: traffic is NOT encrypted");
        return Ok(None);
    };
    let sc = listener_tls(t, &|p| cfg.resolve(p), mllp)
        .map_err(|e| anyhow::anyhow!("listener {name}: {e}"))?;
    let swap = Arc::new(arc_swap::ArcSwap::from_pointee(sc));
    let r = TlsReloader {
        listener: name.to_owned(),
        tls: t.clone(),
        base: cfg.base_dir.clone(),
        swap: swap.clone(),
        // Connections verified under an older generation are retired (HTTP: 421; MLLP:
        // no further message).
        generation: generation.clone(),
        mllp,
        trust: std::sync::Mutex::new(None),
    };
    if let Ok(mut t) = r.trust.lock() {
        *t = r.trust_digest();
    }
    r.record_expiry(metrics);
    reloaders.push(r);
    Ok(Some(swap))
}

/// A listener's TLS config; MLLP listeners offer no ALPN.
fn listener_tls(
    t: &config::TlsConfig,
    resolve: &dyn Fn(&str) -> std::path::PathBuf,
    mllp: bool,
) -> Result<rustls::ServerConfig, String> {
    let mut sc = tls::server_config(t, resolve)?;
    if mllp {
        sc.alpn_protocols.clear();
    }
    Ok(sc)
}

impl TlsReloader {
    fn resolve(&self, p: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn trust_digest(&self) -> Option<[u8; 32]> {
        let mut all = Vec::new();
        for f in self
            .tls
            .client_auth
            .ca
            .iter()
            .chain(self.tls.client_auth.crls.iter())
        {
            all.extend_from_slice(&std::fs::read(self.resolve(f)).ok()?);
            all.push(0);
        }
        Some(identity::sha256(&all))
    }

    fn reload(&self, metrics: &Metrics) -> Result<(), String> {
        let res = listener_tls(&self.tls, &|p| self.resolve(p), self.mllp);
        let result = if res.is_ok() { "ok" } else { "error" };
        metrics
            .tls_reloads
            .with_label_values(&[&self.listener, result])
            .inc();
        let sc = res.map_err(|e| format!("listener {}: {e}", self.listener))?;
        self.swap.store(Arc::new(sc));
        // Connections are retired only when what verified their client certificates
        // changed (CAs, CRLs): a reload that changes nothing must not drop every mTLS
        // keep-alive connection.
        let trust = self.trust_digest();
        let changed = self.trust.lock().map(|mut t| {
            let changed = *t != trust;
            *t = trust;
            changed
        });
        if changed.unwrap_or(true) {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.record_expiry(metrics);
        Ok(())
    }

    /// Days to expiry of the server certificates and client CAs (labels are config file
    /// names, so bounded).
    fn record_expiry(&self, metrics: &Metrics) {
        let files = self
            .tls
            .certificates
            .iter()
            .map(|c| ("server", &c.cert))
            .chain(self.tls.client_auth.ca.iter().map(|c| ("client_ca", c)));
        for (kind, file) in files {
            let Ok(certs) = tls::load_certs(&self.resolve(file)) else {
                continue;
            };
            if let Some(days) = certs
                .iter()
                .filter_map(|c| identity::not_after(c))
                .min()
                .map(identity::days_left)
            {
                metrics
                    .cert_expiry_days
                    .with_label_values(&[&self.listener, kind, file])
                    .set(days);
            }
        }
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let t = &self.tls;
        t.certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .chain(t.client_auth.ca.iter())
            .chain(t.client_auth.crls.iter())
            .map(|f| self.resolve(f))
            .collect()
    }
}

fn reload_all(reloaders: &[TlsReloader], metrics: &Metrics) -> Vec<String> {
    let mut errs = Vec::new();
    for r in reloaders {
        match r.reload(metrics) {
            Ok(()) => tracing::info!(listener = %r.listener, "TLS configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous configuration");
                errs.push(e);
            }
        }
    }
    errs
}

/// Watch the folders of every TLS file; reload after a burst of changes settles (editors
/// and Kubernetes replace files by rename or symlink swap, which shows up as several
/// events).
/// Watch the config file's folder and the policies folder; any change asks for a reload
/// (debounced by the receiver).
fn watch_config_files(
    cfg: &Config,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if cfg.source.as_os_str().is_empty() {
        return None;
    }
    let source = cfg.source.clone();
    let policies = cfg.policies_dir.clone();
    // Only changes to the config file, to policy files, or Kubernetes' atomic ConfigMap
    // swap (`..data` and friends) count: other files in those folders — an audit file
    // kept beside the config, say — must not set off reloads.
    let relevant = move |p: &std::path::Path| {
        p.file_name() == source.file_name()
            || p.parent() == Some(policies.as_path())
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".."))
    };
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() && (ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config; reload with SIGHUP"))
    .ok()?;
    let mut dirs = vec![cfg.base_dir.clone(), cfg.policies_dir.clone()];
    dirs.dedup();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch folder; reload with SIGHUP");
        }
    }
    Some(watcher)
}

fn watch_tls_files(
    reloaders: &Arc<Vec<TlsReloader>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files: Vec<std::path::PathBuf> = reloaders.iter().flat_map(|r| r.files()).collect();
    if files.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // The TLS files themselves, and Kubernetes' atomic Secret swap (`..data` and its
    // timestamped folder, named in the events instead of the files). Other files in the
    // same folders — an audit file, say — must not set off reloads.
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let relevant = move |p: &std::path::Path| {
        p.file_name().is_some_and(|n| {
            names.iter().any(|x| x == n) || n.to_str().is_some_and(|s| s.starts_with(".."))
        })
    };
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() && (ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch TLS files; reload with SIGHUP"))
    .ok()?;
    let mut dirs: Vec<std::path::PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch folder; reload with SIGHUP");
        }
    }
    let reloaders = reloaders.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { break },
                _ = server::stopped(&mut stop) => break,
            }
            // Debounce: let the burst finish, then reload once.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            reload_all(&reloaders, &metrics);
        }
    });
    Some(watcher)
}

impl Gateway {
    /// Bind everything (failing fast if any address is taken), then serve in the
    /// background.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let audit_log = match &cfg.audit {
            Some(a) => Some(
                audit::AuditLog::start(a, &|p| cfg.resolve(p), &metrics)
                    .map_err(|e| anyhow::anyhow!("audit: {e}"))?,
            ),
            None => None,
        };
        let respond = match &cfg.respond {
            Some(r) => Some(
                respond::Respond::start(r, &|p| cfg.resolve(p), metrics.clone(), audit_log.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("respond: {e}"))?,
            ),
            None => None,
        };
        if let Some(r) = &respond {
            r.start_sync(shutdown_rx.clone());
        }
        let mut generation = reload::build(
            &cfg,
            &metrics,
            audit_log.clone(),
            respond.clone(),
            &shutdown_rx,
            None,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // MLLP limiters live as long as their listeners (MLLP changes need a restart).
        let mllp_housekeeper = ratelimit::Housekeeper::start(shutdown_rx.clone());
        let mut bound = Vec::new();
        let mut addrs = HashMap::new();
        let mut reloaders = Vec::new();
        for l in &cfg.listeners {
            let tcp = TcpListener::bind(&l.bind)
                .await
                .with_context(|| format!("listener {}: cannot bind {}", l.name, l.bind))?;
            addrs.insert(l.name.clone(), tcp.local_addr()?);
            let tls_generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tls = bind_tls(
                &l.name,
                l.tls.as_ref(),
                &cfg,
                false,
                &tls_generation,
                &metrics,
                &mut reloaders,
            )?;
            let router = generation
                .routers
                .remove(&l.name)
                .unwrap_or_else(|| Router::new(Vec::new()));
            let trusted = l
                .trusted_proxies
                .iter()
                .filter_map(|c| proxy::headers::parse_cidr(c))
                .collect();
            bound.push((
                tcp,
                Arc::new(ListenerCtx {
                    name: Arc::from(l.name.as_str()),
                    router: arc_swap::ArcSwap::from_pointee(router),
                    limits: l.limits.clone(),
                    trusted,
                    metrics: metrics.clone(),
                    tls,
                    tls_generation,
                    handshake_timeout: l
                        .tls
                        .as_ref()
                        .map(|t| t.handshake_timeout.0)
                        .unwrap_or_default(),
                    conn_limit: Arc::new(Semaphore::new(l.limits.max_connections)),
                }),
            ));
        }
        let mut mllp_bound = Vec::new();
        for m in &cfg.mllp {
            let tcp = TcpListener::bind(&m.bind)
                .await
                .with_context(|| format!("mllp listener {}: cannot bind {}", m.name, m.bind))?;
            addrs.insert(m.name.clone(), tcp.local_addr()?);
            let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tls = bind_tls(
                &m.name,
                m.tls.as_ref(),
                &cfg,
                true,
                &generation,
                &metrics,
                &mut reloaders,
            )?;
            let mut ctx = mllp::MllpCtx::new(
                m,
                &|p| cfg.resolve(p),
                tls,
                &metrics,
                audit_log.clone(),
                &mllp_housekeeper,
                m.dlp
                    .as_ref()
                    .and_then(|d| cfg.policies.get(d))
                    .and_then(|p| p.dlp.as_ref()),
            )
            .map_err(|e| anyhow::anyhow!("mllp listener {}: {e}", m.name))?;
            ctx.tls_generation = generation;
            ctx.respond = respond.clone();
            mllp_bound.push((tcp, Arc::new(ctx)));
        }
        let admin_tcp = TcpListener::bind(&cfg.admin.bind)
            .await
            .with_context(|| format!("admin: cannot bind {}", cfg.admin.bind))?;
        let admin_addr = admin_tcp.local_addr()?;
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(bind = %admin_addr, "admin listener is not on loopback; restrict access to it");
        }

        let mut tasks = JoinSet::new();
        for (tcp, ctx) in mllp_bound {
            tasks.spawn(mllp::serve(
                ctx,
                tcp,
                shutdown_rx.clone(),
                cfg.shutdown_grace,
            ));
        }
        let ctxs: Vec<Arc<ListenerCtx>> = bound.iter().map(|(_, c)| c.clone()).collect();
        for (tcp, ctx) in bound {
            tasks.spawn(server::serve_listener(
                ctx,
                tcp,
                shutdown_rx.clone(),
                cfg.shutdown_grace,
            ));
        }
        let admin_state = Arc::new(admin::AdminState {
            metrics: metrics.clone(),
            upstreams: arc_swap::ArcSwap::from_pointee(generation.upstreams.clone()),
            shutdown: shutdown_rx.clone(),
            respond: respond.clone(),
        });
        // The admin listener keeps answering (readyz: draining) until the drain is done.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        tokio::spawn(admin::serve(admin_tcp, admin_state.clone(), admin_stop_rx));
        tasks.spawn(async move {
            // Keeps the admin stop sender alive for as long as the gateway runs.
            let _keep = admin_stop_tx;
            std::future::pending::<()>().await;
        });
        let reloaders = Arc::new(reloaders);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = watch_tls_files(&reloaders, metrics.clone(), shutdown_rx.clone());
        metrics.config_loaded.with_label_values(&[VERSION]).set(1);
        for (name, addr) in &addrs {
            tracing::info!(listener = %name, %addr, "listening");
        }
        tracing::info!(%admin_addr, "admin listening");
        let config_watcher = watch_config_files(&cfg, reload_tx.clone());
        let gw = Gateway {
            listeners: addrs,
            admin: admin_addr,
            shutdown: shutdown_tx,
            tasks,
            metrics,
            reloaders,
            _watcher: watcher,
            _config_watcher: config_watcher,
            live: Arc::new(Live {
                source: cfg.source.clone(),
                fixed: reload::restart_only(&cfg),
                ctxs,
                admin: admin_state,
                current: std::sync::Mutex::new(generation),
                running: std::sync::Mutex::new(format!("{cfg:?}")),
                audit: audit_log,
                respond,
                shutdown: shutdown_rx.clone(),
            }),
        };
        // File-change reloads run here, one at a time.
        let live = gw.live.clone();
        let metrics = gw.metrics.clone();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut rx = reload_rx;
            loop {
                tokio::select! {
                    got = rx.recv() => if got.is_none() { break },
                    _ = server::stopped(&mut stop) => break,
                }
                // Debounce: editors and Kubernetes write in bursts.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                if let Err(errs) = live.reload(&metrics, false).await {
                    for e in errs {
                        tracing::error!(error = %e, "config reload refused; still serving the previous config");
                    }
                }
            }
        });
        Ok(gw)
    }

    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).copied()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Re-read the config file and its policies and, if everything is valid, serve them
    /// (what SIGHUP and a change to the files do). On error nothing changes.
    pub async fn reload_config(&self) -> Result<(), Vec<String>> {
        self.live.reload(&self.metrics, true).await
    }

    /// Re-read every listener's certificates, client CAs and CRLs (what SIGHUP does).
    /// Returns the errors; a listener whose files are broken keeps its previous config.
    pub fn reload_tls(&self) -> Vec<String> {
        reload_all(&self.reloaders, &self.metrics)
    }

    /// Stop accepting and start draining.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Wait until every listener has drained (or its grace period ran out).
    pub async fn drained(mut self) {
        // The last task is the admin keeper; everything else is a listener.
        let listeners = self.listeners.len();
        let mut done = 0;
        while done < listeners {
            match self.tasks.join_next().await {
                Some(_) => done += 1,
                None => break,
            }
        }
        self.tasks.abort_all();
        // Answered requests' records reach the disk before the process exits.
        if let Some(a) = &self.live.audit {
            a.flush().await;
        }
    }
}

/// Run until `signal` resolves, then drain and return.
pub async fn run(cfg: Config, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let gw = Gateway::start(cfg).await?;
    let signal = std::pin::pin!(signal);
    #[cfg(unix)]
    {
        // SIGHUP: re-read certificates, client CAs and CRLs.
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let mut signal = signal;
        match unix_signal(SignalKind::hangup()) {
            Ok(mut hup) => loop {
                tokio::select! {
                    _ = &mut signal => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading config, policies and TLS material");
                        if let Err(errs) = gw.reload_config().await {
                            for e in errs {
                                tracing::error!(error = %e, "config reload refused; still serving the previous config");
                            }
                        }
                        gw.reload_tls();
                    }
                }
            },
            Err(_) => signal.await,
        }
    }
    #[cfg(not(unix))]
    signal.await;
    tracing::info!("shutdown requested; draining");
    gw.begin_shutdown();
    gw.drained().await;
    tracing::info!("drained; exiting");
    Ok(())
}
