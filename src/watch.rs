//! One debounced file watcher for everything the gateway reloads from disk (the config and
//! its policies, TLS certificates, CAs and CRLs).
//!
//! Editors and Kubernetes replace files by rename or by swapping a `..data` symlink, which
//! shows up as a burst of events on the *folder*, often naming other files. So folders are
//! watched, a caller-given `relevant` filter keeps only events about its files (and the
//! Kubernetes swap), and [`settle`] waits for a burst to end before the caller reloads once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How long a burst of events must be quiet before a reload.
pub const QUIET: Duration = Duration::from_millis(200);

/// Watch `dirs` (non-recursively); every non-access event that `relevant` accepts (or that
/// names no path) sends `()` on `tx`. `None` (logged) when watching is impossible: the
/// operator can still reload with SIGHUP.
pub fn watch_folders(
    dirs: &[PathBuf],
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    tx: UnboundedSender<()>,
    what: &'static str,
) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() && (ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, what, "cannot watch files; reload with SIGHUP"))
    .ok()?;
    let mut dirs: Vec<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, what, "cannot watch folder; reload with SIGHUP");
        }
    }
    Some(watcher)
}

/// A file name Kubernetes uses for its atomic ConfigMap/Secret swap (`..data`,
/// `..2024_01_01_00_00_00.123`).
pub fn is_kubernetes_swap(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."))
}

/// After the first event of a burst: wait until it has been quiet for [`QUIET`], dropping
/// the events that arrived meanwhile.
pub async fn settle(rx: &mut UnboundedReceiver<()>) {
    tokio::time::sleep(QUIET).await;
    while rx.try_recv().is_ok() {}
}
