//! Ward: a hardened HL7/FHIR gateway.
//!
//! [`Gateway::start`] boots every listener, the admin listener and the upstream health
//! probes from a validated [`config::Config`]; tests boot it in-process on `127.0.0.1:0`
//! and read the bound addresses back. See `stack.rs` for the order of every step a
//! request takes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod conn_guard;
pub mod context;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod server;
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
use crate::context::RouteInfo;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::router::{Route, Router};
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
}

impl Gateway {
    /// Bind everything (failing fast if any address is taken), then serve in the
    /// background.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for u in &cfg.upstreams {
            let up = Upstream::new(u, &cfg, &metrics)
                .map_err(|e| anyhow::anyhow!("upstream {}: {e}", u.name))?;
            upstreams.insert(u.name.clone(), Arc::new(up));
        }

        let mut bound = Vec::new();
        let mut addrs = HashMap::new();
        for l in &cfg.listeners {
            let tcp = TcpListener::bind(&l.bind)
                .await
                .with_context(|| format!("listener {}: cannot bind {}", l.name, l.bind))?;
            addrs.insert(l.name.clone(), tcp.local_addr()?);
            let tls = match &l.tls {
                Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                    tls::server_config(t, &|p| cfg.resolve(p))
                        .map_err(|e| anyhow::anyhow!("listener {}: {e}", l.name))?,
                ))),
                None => {
                    tracing::warn!(listener = %l.name, bind = %l.bind, "plaintext listener: traffic is NOT encrypted");
                    None
                }
            };
            let mut routes = Vec::new();
            for r in cfg.routes.iter().filter(|r| r.listener == l.name) {
                let up = upstreams
                    .get(&r.upstream)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("route {}: unknown upstream", r.name))?;
                let methods = r
                    .methods
                    .clone()
                    .unwrap_or_else(|| {
                        config::DEFAULT_METHODS
                            .iter()
                            .map(|s| s.to_string())
                            .collect()
                    })
                    .iter()
                    .filter_map(|m| m.parse().ok())
                    .collect();
                routes.push(Route {
                    metrics: router::RouteMetrics {
                        duration: metrics.request_duration.with_label_values(&[&r.name]),
                        bytes: metrics.bytes.with_label_values(&[&r.name]),
                    },
                    info: Arc::new(RouteInfo {
                        name: Arc::from(r.name.as_str()),
                        fhir: r.fhir,
                        path_prefix: r.path_prefix.clone(),
                        rewrite_prefix: r.rewrite_prefix.clone(),
                        upstream: Arc::from(r.upstream.as_str()),
                    }),
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    methods,
                    service: stack::build(r, &cfg, &l.limits, up, metrics.clone()),
                });
            }
            let trusted = l
                .trusted_proxies
                .iter()
                .filter_map(|c| proxy::headers::parse_cidr(c))
                .collect();
            bound.push((
                tcp,
                Arc::new(ListenerCtx {
                    name: Arc::from(l.name.as_str()),
                    router: Router::new(routes),
                    limits: l.limits.clone(),
                    trusted,
                    metrics: metrics.clone(),
                    tls,
                    handshake_timeout: l
                        .tls
                        .as_ref()
                        .map(|t| t.handshake_timeout.0)
                        .unwrap_or_default(),
                    conn_limit: Arc::new(Semaphore::new(l.limits.max_connections)),
                }),
            ));
        }
        let admin_tcp = TcpListener::bind(&cfg.admin.bind)
            .await
            .with_context(|| format!("admin: cannot bind {}", cfg.admin.bind))?;
        let admin_addr = admin_tcp.local_addr()?;
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(bind = %admin_addr, "admin listener is not on loopback; restrict access to it");
        }

        let mut tasks = JoinSet::new();
        let ups: Vec<Arc<Upstream>> = upstreams.values().cloned().collect();
        for up in &ups {
            let up = up.clone();
            let metrics = metrics.clone();
            let mut stop = shutdown_rx.clone();
            // Probes run detached from the drain: they stop with the shutdown signal.
            tokio::spawn(async move {
                loop {
                    up.probe(&metrics).await;
                    tokio::select! {
                        _ = tokio::time::sleep(up.cfg.health.interval.0) => {}
                        _ = server::stopped(&mut stop) => break,
                    }
                }
            });
        }
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
            upstreams: ups,
            shutdown: shutdown_rx.clone(),
        });
        // The admin listener keeps answering (readyz: draining) until the drain is done.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        tokio::spawn(admin::serve(admin_tcp, admin_state, admin_stop_rx));
        tasks.spawn(async move {
            // Keeps the admin stop sender alive for as long as the gateway runs.
            let _keep = admin_stop_tx;
            std::future::pending::<()>().await;
        });
        metrics.config_loaded.with_label_values(&[VERSION]).set(1);
        for (name, addr) in &addrs {
            tracing::info!(listener = %name, %addr, "listening");
        }
        tracing::info!(%admin_addr, "admin listening");
        Ok(Gateway {
            listeners: addrs,
            admin: admin_addr,
            shutdown: shutdown_tx,
            tasks,
            metrics,
        })
    }

    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).copied()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
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
    }
}

/// Run until `signal` resolves, then drain and return.
pub async fn run(cfg: Config, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let gw = Gateway::start(cfg).await?;
    signal.await;
    tracing::info!("shutdown requested; draining");
    gw.begin_shutdown();
    gw.drained().await;
    tracing::info!("drained; exiting");
    Ok(())
}
