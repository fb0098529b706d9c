//! TLS material that changes under a running gateway: each listener's server config is
//! rebuilt from its files (certificates, client CAs, CRLs) and swapped in for new
//! connections; connections whose client certificate was verified against superseded CAs
//! or CRLs are retired. Files are read on the blocking pool, never on an async worker.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::primitives::TlsConfig;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::{identity, tls};

/// Rebuilds one listener's TLS config from its files (certificates, client CAs, CRLs) and
/// swaps it in; new connections use the new one. On error the last good config stays.
pub(super) struct TlsReloader {
    listener: String,
    tls: TlsConfig,
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
pub(super) fn bind_tls(
    name: &str,
    tls: Option<&TlsConfig>,
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
    t: &TlsConfig,
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

pub(super) fn reload_all(reloaders: &[TlsReloader], metrics: &Metrics) -> Vec<String> {
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

/// Watch the folders of every TLS file; reload all listeners (off the async workers: files
/// are read and CRLs parsed) once a burst of changes settles.
pub(super) fn watch_tls_files(
    reloaders: &Arc<Vec<TlsReloader>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Option<crate::watch::FolderWatch> {
    let files: Vec<std::path::PathBuf> = reloaders.iter().flat_map(|r| r.files()).collect();
    if files.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // The TLS files themselves, and Kubernetes' atomic Secret swap (named in the events
    // instead of the files). Other files in the same folders must not set off reloads.
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let relevant = move |p: &std::path::Path| {
        crate::watch::is_kubernetes_swap(p)
            || p.file_name().is_some_and(|n| names.iter().any(|x| x == n))
    };
    let dirs: Vec<std::path::PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
        .collect();
    let watcher = crate::watch::watch_folders(&dirs, relevant, tx, "tls")?;
    let reloaders = reloaders.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { break },
                _ = crate::shutdown::stopped(&mut stop) => break,
            }
            crate::watch::settle(&mut rx).await;
            reload_all_blocking(reloaders.clone(), metrics.clone()).await;
        }
    });
    Some(watcher)
}

/// [`reload_all`] on the blocking pool: it reads files and parses certificates and CRLs.
pub(super) async fn reload_all_blocking(
    reloaders: Arc<Vec<TlsReloader>>,
    metrics: Arc<Metrics>,
) -> Vec<String> {
    tokio::task::spawn_blocking(move || reload_all(&reloaders, &metrics))
        .await
        .unwrap_or_else(|_| vec!["TLS reload task failed".to_owned()])
}
