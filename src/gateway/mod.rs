//! Gateway start-up and lifetime: bind every listener (HTTP, MLLP, admin) from a validated
//! config, start the background work (health probes, audit, detect-and-respond, file
//! watchers), and drain on shutdown. [`run`] is what `ward run` does, signals included.
//! Hot reload lives in `live.rs` (config) and `tls_reload.rs` (certificates).

mod live;
mod tls_reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::ListenerCtx;

use crate::router::Router;
use crate::{admin, audit, mllp, proxy, ratelimit, reload, respond, server, VERSION};

/// A running gateway.
pub struct Gateway {
    listeners: HashMap<String, SocketAddr>,
    admin: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    pub metrics: Arc<Metrics>,
    reloaders: Arc<Vec<tls_reload::TlsReloader>>,
    _watcher: Option<crate::watch::FolderWatch>,
    _config_watcher: Option<crate::watch::FolderWatch>,
    live: Arc<live::Live>,
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
            let tls = tls_reload::bind_tls(
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
            let tls = tls_reload::bind_tls(
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
        let watcher = tls_reload::watch_tls_files(&reloaders, metrics.clone(), shutdown_rx.clone());
        metrics.config_loaded.with_label_values(&[VERSION]).set(1);
        for (name, addr) in &addrs {
            tracing::info!(listener = %name, %addr, "listening");
        }
        tracing::info!(%admin_addr, "admin listening");
        let config_watcher = live::watch_config_files(&cfg, reload_tx.clone());
        let gw = Gateway {
            listeners: addrs,
            admin: admin_addr,
            shutdown: shutdown_tx,
            tasks,
            metrics,
            reloaders,
            _watcher: watcher,
            _config_watcher: config_watcher,
            live: Arc::new(live::Live {
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
                    _ = crate::shutdown::stopped(&mut stop) => break,
                }
                // Editors and Kubernetes write in bursts.
                crate::watch::settle(&mut rx).await;
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

    /// Every bound address, one `<listener> <address>` line each (the admin listener as
    /// `admin`), sorted: what `ward run --addresses-file` writes, so scripts and tests can
    /// bind port 0 and still find the gateway.
    pub fn addresses_text(&self) -> String {
        let mut lines: Vec<String> = self
            .listeners
            .iter()
            .map(|(n, a)| format!("{n} {a}"))
            .collect();
        lines.push(format!("admin {}", self.admin));
        lines.sort();
        lines.join("\n") + "\n"
    }

    /// Re-read the config file and its policies and, if everything is valid, serve them
    /// (what SIGHUP and a change to the files do). On error nothing changes.
    pub async fn reload_config(&self) -> Result<(), Vec<String>> {
        self.live.reload(&self.metrics, true).await
    }

    /// Re-read every listener's certificates, client CAs and CRLs (what SIGHUP does).
    /// Returns the errors; a listener whose files are broken keeps its previous config.
    pub async fn reload_tls(&self) -> Vec<String> {
        tls_reload::reload_all_blocking(self.reloaders.clone(), self.metrics.clone()).await
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
    run_with(cfg, signal, None).await
}

/// [`run`], and once every listener is bound, write their addresses to `addresses_file`
/// ([`Gateway::addresses_text`]; written to a temporary name and renamed, so a reader never
/// sees half a file).
pub async fn run_with(
    cfg: Config,
    signal: impl std::future::Future<Output = ()>,
    addresses_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let gw = Gateway::start(cfg).await?;
    if let Some(f) = addresses_file {
        write_atomically(f, &gw.addresses_text()).context("writing the addresses file")?;
    }
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
                        gw.reload_tls().await;
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

/// Write `text` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
