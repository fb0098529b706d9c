//! A circuit breaker for a shared backend (Redis) that the request path consults.
//!
//! Why: while Redis refuses connections or does not answer, every check that asks it
//! waits up to the configured timeout before the failure mode applies, so an outage
//! adds that timeout to every request. The breaker opens after
//! [`FAILURES_TO_OPEN`] consecutive failures, or at once when the failure says nobody
//! is listening (connection refused): from then on callers skip the backend and apply
//! their failure mode immediately. One background probe at a time asks the backend,
//! with a growing pause between attempts, and closes the circuit at the first answer.
//!
//! State is reported as a gauge (1 open, 0 closed) and a counter of short-circuited
//! calls, both labelled by the owning policy's name (bounded: it comes from the config).
//!
//! A leaf: it knows nothing about Redis; the owner hands it the probe.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

/// Consecutive failures (errors or timeouts) that open the circuit.
pub const FAILURES_TO_OPEN: u32 = 3;
/// First pause between probes; doubles up to [`PROBE_MAX_GAP`].
const PROBE_FIRST_GAP: Duration = Duration::from_millis(100);
const PROBE_MAX_GAP: Duration = Duration::from_secs(2);

pub struct Breaker {
    /// What the breaker guards, for logs (`policy` name).
    name: String,
    open: AtomicBool,
    failures: AtomicU32,
    probing: AtomicBool,
    state: Option<IntGauge>,
    short_circuits: Option<IntCounter>,
}

impl Breaker {
    pub fn new(name: &str, state: IntGauge, short_circuits: IntCounter) -> Breaker {
        state.set(0);
        Breaker {
            state: Some(state),
            short_circuits: Some(short_circuits),
            ..Breaker::unreported(name)
        }
    }

    /// A breaker without metrics (tools and benches that build a backend by hand).
    pub fn unreported(name: &str) -> Breaker {
        Breaker {
            name: name.to_owned(),
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            state: None,
            short_circuits: None,
        }
    }

    fn set_state(&self, v: i64) {
        if let Some(g) = &self.state {
            g.set(v);
        }
    }

    /// May the caller ask the backend? `false` (and counted) while the circuit is open.
    pub fn allow(&self) -> bool {
        if self.open.load(Ordering::Acquire) {
            if let Some(c) = &self.short_circuits {
                c.inc();
            }
            false
        } else {
            true
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The backend answered.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            self.set_state(0);
            tracing::info!(breaker = %self.name, "redis answering again; circuit closed");
        }
    }

    /// The backend failed; `refused` when nothing listens (no point in waiting for more
    /// failures). Returns true when this call opened the circuit: the caller then starts
    /// the probe with [`Breaker::probe_until_closed`].
    pub fn failure(&self, refused: bool) -> bool {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if (refused || n >= FAILURES_TO_OPEN) && !self.open.swap(true, Ordering::AcqRel) {
            self.set_state(1);
            tracing::warn!(
                breaker = %self.name,
                consecutive_failures = n,
                "redis failing; circuit open: the failure mode applies without asking redis until a probe succeeds"
            );
            return true;
        }
        false
    }

    /// Start the background probe unless one runs already. `ping` is one bounded attempt
    /// (it must time out by itself). The task holds the breaker weakly: it ends when the
    /// owner is dropped (config reload) or the circuit closes.
    pub fn probe_until_closed<F, Fut>(self: &Arc<Self>, ping: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let weak: Weak<Breaker> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut gap = PROBE_FIRST_GAP;
            loop {
                tokio::time::sleep(gap).await;
                gap = (gap * 2).min(PROBE_MAX_GAP);
                match weak.upgrade() {
                    Some(b) if b.is_open() => {}
                    Some(b) => {
                        b.probing.store(false, Ordering::Release);
                        return;
                    }
                    None => return,
                }
                let ok = ping().await;
                let Some(b) = weak.upgrade() else { return };
                if ok {
                    b.success();
                    b.probing.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn breaker() -> Arc<Breaker> {
        let g = IntGauge::new("g", "g").unwrap();
        let c = IntCounter::new("c", "c").unwrap();
        Arc::new(Breaker::new("p", g, c))
    }

    #[test]
    fn opens_after_consecutive_failures_or_at_once_on_refusal() {
        let b = breaker();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!b.failure(false));
            assert!(b.allow());
        }
        b.success();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!b.failure(false));
        }
        assert!(b.failure(false), "the Kth consecutive failure opens");
        assert!(!b.failure(false), "opening is reported once");
        assert!(!b.allow());
        assert!(!b.allow());
        assert_eq!(b.short_circuits.as_ref().unwrap().get(), 2);
        assert_eq!(b.state.as_ref().unwrap().get(), 1);
        b.success();
        assert!(b.allow());
        assert_eq!(b.state.as_ref().unwrap().get(), 0);
        assert!(b.failure(true), "a refusal opens at once");
    }

    #[tokio::test]
    async fn one_probe_at_a_time_and_it_closes_the_circuit() {
        let b = breaker();
        assert!(b.failure(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..5 {
            let (calls, tx) = (calls.clone(), tx.clone());
            b.probe_until_closed(move || {
                let (calls, tx) = (calls.clone(), tx.clone());
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(());
                    n >= 2
                }
            });
        }
        drop(tx);
        // Three attempts (two failed, one answered), then the channel closes: only one
        // probe task ever ran.
        let mut seen = 0;
        while rx.recv().await.is_some() {
            seen += 1;
        }
        assert_eq!(seen, 3);
        assert!(!b.is_open());
        assert!(b.allow());
    }
}
