//! Shutdown signalling shared by every long-lived task (listeners, connection drains,
//! background fetchers, MLLP connections): a `watch` channel that turns `true` once. A leaf
//! of the module graph.

use tokio::sync::watch;

/// Resolves once shutdown is signalled (or the sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}
