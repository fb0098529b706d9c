//! The hot-reload state of a running gateway: what a config reload swaps (routers and
//! upstreams, per listener, as one generation) and what it must leave alone (listeners,
//! audit, admin — restart-only settings).

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::ListenerCtx;
use crate::{admin, audit, reload, respond};

/// What a config reload swaps, and what it must leave alone.
pub(super) struct Live {
    pub(super) source: std::path::PathBuf,
    /// `reload::restart_only` of the running config.
    pub(super) fixed: String,
    pub(super) ctxs: Vec<Arc<ListenerCtx>>,
    pub(super) admin: Arc<admin::AdminState>,
    pub(super) current: std::sync::Mutex<reload::Generation>,
    /// The running config, for telling a file rewritten unchanged from a real change.
    pub(super) running: std::sync::Mutex<String>,
    pub(super) audit: Option<audit::AuditLog>,
    pub(super) respond: Option<Arc<respond::Respond>>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl Live {
    /// Load the config file again and, if all of it is valid and builds, serve it.
    /// `force` rebuilds even an unchanged config (SIGHUP: key and CA files it names may
    /// have changed); a file-change reload of an identical config keeps the running
    /// generation, rate-limit buckets included.
    pub(super) async fn reload(
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

/// Watch the config file's folder and the policies folder; a change to the config file, a
/// policy file or Kubernetes' ConfigMap swap asks for a reload (debounced by the receiver).
/// Other files in those folders — an audit file kept beside the config, say — do not.
pub(super) fn watch_config_files(
    cfg: &Config,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<crate::watch::FolderWatch> {
    if cfg.source.as_os_str().is_empty() {
        return None;
    }
    let source = cfg.source.clone();
    let policies = cfg.policies_dir.clone();
    let relevant = move |p: &std::path::Path| {
        p.file_name() == source.file_name()
            || p.parent() == Some(policies.as_path())
            || crate::watch::is_kubernetes_swap(p)
    };
    crate::watch::watch_folders(
        &[cfg.base_dir.clone(), cfg.policies_dir.clone()],
        relevant,
        tx,
        "config",
    )
}
