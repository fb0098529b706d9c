//! One debounced file watcher for everything the gateway reloads from disk (the config and
//! its policies, TLS certificates, CAs and CRLs).
//!
//! Editors and Kubernetes replace files by rename or by swapping a `..data` symlink, which
//! shows up as a burst of events on the *folder*, often naming other files. So folders are
//! watched, a caller-given `relevant` filter keeps only events about its files (and the
//! Kubernetes swap), and [`settle`] waits for a burst to end before the caller reloads once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How long a burst of events must be quiet before a reload.
pub const QUIET: Duration = Duration::from_millis(200);

/// A running folder watch; dropping it stops the watching.
pub struct FolderWatch {
    #[cfg(target_os = "linux")]
    task: tokio::task::AbortHandle,
    #[cfg(not(target_os = "linux"))]
    _watcher: notify::RecommendedWatcher,
}

#[cfg(target_os = "linux")]
impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `dirs` (non-recursively); every change event that `relevant` accepts (or that names
/// no path) sends `()` on `tx`. `None` (logged) when watching is impossible: the operator can
/// still reload with SIGHUP.
///
/// On Linux the inotify descriptor is read by a task on the gateway's own runtime, and only
/// for events that can change a file's content or name. A general-purpose watcher also
/// subscribes to *opens*: every process that merely reads a file in a watched folder (a
/// backup agent, a web server sharing the folder, Ward re-reading a key) then wakes a thread
/// on the gateway's cores — measured at 40 % of a one-core gateway's CPU when a file there
/// was read once per request.
pub fn watch_folders(
    dirs: &[PathBuf],
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    tx: UnboundedSender<()>,
    what: &'static str,
) -> Option<FolderWatch> {
    let mut dirs: Vec<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    dirs.sort();
    dirs.dedup();
    platform::watch(&dirs, relevant, tx, what)
}

#[cfg(target_os = "linux")]
mod platform {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use inotify::{EventMask, Inotify, WatchMask};
    use tokio::io::unix::AsyncFd;
    use tokio::sync::mpsc::UnboundedSender;

    use super::FolderWatch;

    /// Content or name changes only: no OPEN, ACCESS or CLOSE_NOWRITE (reads), and no
    /// MODIFY (a writer's every `write`; its CLOSE_WRITE ends the burst anyway).
    fn mask() -> WatchMask {
        WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
    }

    pub(super) fn watch(
        dirs: &[&PathBuf],
        relevant: impl Fn(&Path) -> bool + Send + 'static,
        tx: UnboundedSender<()>,
        what: &'static str,
    ) -> Option<FolderWatch> {
        let warn = |e: std::io::Error| {
            tracing::warn!(error = %e, what, "cannot watch files; reload with SIGHUP");
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| warn(std::io::Error::other(e)))
            .ok()?;
        let inotify = Inotify::init().map_err(warn).ok()?;
        let mut folders = HashMap::new();
        for d in dirs {
            match inotify.watches().add(d, mask()) {
                Ok(wd) => {
                    folders.insert(wd, (*d).clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, what, "cannot watch folder; reload with SIGHUP");
                }
            }
        }
        // Registering the descriptor with the reactor needs the runtime's context.
        let _guard = runtime.enter();
        // `AsyncFd::new` is deprecated because a `T: AsRawFd` that does not own its descriptor
        // could close it while registered; `Inotify` owns its descriptor and lives inside the
        // `AsyncFd` until the task ends, which is the sound case (the replacement is `unsafe`).
        #[allow(deprecated)]
        let mut fd = AsyncFd::new(inotify).map_err(warn).ok()?;
        let task = runtime.spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(mut ready) = fd.readable_mut().await else {
                    break;
                };
                let wanted = match ready.try_io(|i| {
                    let events = i.get_mut().read_events(&mut buf)?;
                    let mut wanted = false;
                    for ev in events {
                        let path = match (ev.name, folders.get(&ev.wd)) {
                            (Some(name), Some(dir)) => Some(dir.join(name)),
                            _ => None,
                        };
                        wanted |= ev.mask.contains(EventMask::Q_OVERFLOW)
                            || match &path {
                                Some(p) => relevant(p),
                                // The folder itself moved or went away.
                                None => !ev.mask.contains(EventMask::IGNORED),
                            };
                    }
                    Ok(wanted)
                }) {
                    Ok(Ok(w)) => w,
                    // Nothing to read after all; wait again.
                    Err(_would_block) => continue,
                    // A failed read: reload to be safe, then go on watching.
                    Ok(Err(_)) => true,
                };
                if wanted && tx.send(()).is_err() {
                    break;
                }
            }
        });
        Some(FolderWatch {
            task: task.abort_handle(),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::path::{Path, PathBuf};

    use tokio::sync::mpsc::UnboundedSender;

    use super::FolderWatch;

    pub(super) fn watch(
        dirs: &[&PathBuf],
        relevant: impl Fn(&Path) -> bool + Send + 'static,
        tx: UnboundedSender<()>,
        what: &'static str,
    ) -> Option<FolderWatch> {
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !ev.kind.is_access()
                    && (ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)))
                {
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, what, "cannot watch files; reload with SIGHUP"))
        .ok()?;
        for d in dirs {
            if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, what, "cannot watch folder; reload with SIGHUP");
            }
        }
        Some(FolderWatch { _watcher: watcher })
    }
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
