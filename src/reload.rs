//! Hot reload of routes, policies and upstreams.
//!
//! A *generation* is everything a config reload replaces: the upstream connection pools,
//! every route's policy stack (token caches, JWKS fetchers, rate limiters, compiled
//! validation profiles) and the background tasks they run. A reload loads and validates
//! the whole config first; only if every part of it builds is the new generation swapped
//! in — per listener, one atomic pointer swap (arc-swap) — and the old one retired. A
//! request holds the route stack it was routed to, so requests in flight finish on the
//! config they started with. A config that fails to load or build changes nothing.
//!
//! What a reload cannot change (listeners, MLLP listeners, admin, audit, logging,
//! shutdown grace) is compared with the running config; a difference is refused with a
//! message asking for a restart, rather than half-applied. TLS material (certificates,
//! client CAs, CRLs) is reloaded too, by the same signal.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Config};
use crate::context::RouteInfo;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::router::{Route, Router};
use crate::{metrics, router, server, stack};

pub struct Generation {
    pub routers: HashMap<String, Router>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Local rate limiters by definition, for the next generation to carry over.
    pub limiters: HashMap<String, Arc<crate::ratelimit::local::LocalLimiter>>,
    /// Stops this generation's background tasks (JWKS refresh, health probes, key sweeps).
    stop: Arc<watch::Sender<bool>>,
}

impl Generation {
    /// The generation is no longer served: its background tasks end. Requests already
    /// holding its stacks still finish.
    pub fn retire(&self) {
        let _ = self.stop.send(true);
    }
}

/// The parts of a config only a restart can change, in a comparable form.
pub fn restart_only(cfg: &Config) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        cfg.listeners,
        cfg.mllp,
        cfg.admin.bind,
        cfg.audit,
        cfg.log,
        cfg.shutdown_grace,
        cfg.respond
    )
}

/// Build every upstream pool and route stack of `cfg`. Nothing is served from it until
/// the caller swaps it in.
pub fn build(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    audit: Option<crate::audit::AuditLog>,
    respond: Option<Arc<crate::respond::Respond>>,
    global_stop: &watch::Receiver<bool>,
    previous: Option<&Generation>,
) -> Result<Generation, String> {
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    for u in &cfg.upstreams {
        let up = Upstream::new(u, &|f| cfg.resolve(f), metrics)
            .map_err(|e| format!("upstream {}: {e}", u.name))?;
        // Keep the last known health of an unchanged upstream, so that a reload does not
        // flip /readyz to not-ready until the next probe.
        if let Some(old) = previous
            .map(|g| g.upstreams.as_slice())
            .into_iter()
            .flatten()
            .find(|o| o.name.as_ref() == u.name && format!("{:?}", o.cfg) == format!("{u:?}"))
        {
            up.inherit_health(old);
        }
        upstreams.insert(u.name.clone(), Arc::new(up));
    }
    let mut shared = stack::StackShared::new(cfg, metrics.clone(), rx.clone());
    shared.engines.audit = audit;
    shared.respond = respond;
    shared.engines.carry.previous = previous.map(|g| g.limiters.clone()).unwrap_or_default();
    let mut routers = HashMap::new();
    for l in &cfg.listeners {
        let mut routes = Vec::new();
        for r in cfg.routes.iter().filter(|r| r.listener == l.name) {
            let up = upstreams
                .get(&r.upstream)
                .cloned()
                .ok_or_else(|| format!("route {}: unknown upstream", r.name))?;
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
            let name: Arc<str> = Arc::from(r.name.as_str());
            routes.push(Route {
                metrics: Arc::new(router::RouteMetrics {
                    name: name.clone(),
                    duration: metrics.request_duration.with_label_values(&[&r.name]),
                    bytes: metrics.bytes.with_label_values(&[&r.name]),
                    requests: metrics::RequestCounters::new(
                        metrics.requests.clone(),
                        Arc::from(l.name.as_str()),
                        name.clone(),
                    ),
                }),
                info: Arc::new(RouteInfo {
                    name,
                    fhir: r.fhir,
                    path_prefix: r.path_prefix.clone(),
                    rewrite_prefix: r.rewrite_prefix.clone(),
                    upstream: Arc::from(r.upstream.as_str()),
                    public_url: r.public_url.as_deref().map(Arc::from),
                }),
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                methods,
                service: stack::build(r, cfg, &l.limits, up, &mut shared)
                    .map_err(|e| format!("route {}: {e}", r.name))?,
            });
        }
        routers.insert(l.name.clone(), Router::new(routes));
    }
    // Built: from here on this generation runs tasks. They stop when it is retired or
    // when the gateway shuts down, whichever comes first.
    {
        let tx = tx.clone();
        let mut global = global_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = server::stopped(&mut global) => { let _ = tx.send(true); }
                _ = tx.closed() => {}
            }
        });
    }
    let ups: Vec<Arc<Upstream>> = upstreams.into_values().collect();
    for up in &ups {
        let up = up.clone();
        let metrics = metrics.clone();
        let mut stop = rx.clone();
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
    Ok(Generation {
        routers,
        upstreams: ups,
        limiters: std::mem::take(&mut shared.engines.carry.current),
        stop: tx,
    })
}
