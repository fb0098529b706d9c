//! Outage episodes of one upstream, for logs that stay readable during an outage.
//!
//! Why: logging every failed request turned a 6 s upstream outage into ~40,000 WARN lines,
//! which buries everything else and costs I/O exactly when the gateway is under stress.
//! An episode starts at the first failure after a success (or at start-up) and ends at the
//! next success: one WARN line when it starts (with the first error), one line when it
//! ends (how many requests failed, how long it lasted). Per-request detail stays in the
//! `ward_upstream_errors_total` counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to log.
    None,
    /// The first failure of a new episode.
    Started,
    /// The first success after an episode.
    Ended { failed: u64, lasted: Duration },
}

struct Episode {
    started: Instant,
    failed: u64,
}

/// Per upstream. A success while no episode is open costs one atomic load.
#[derive(Default)]
pub struct OutageTracker {
    open: AtomicBool,
    episode: Mutex<Option<Episode>>,
}

impl OutageTracker {
    pub fn failure(&self, now: Instant) -> Transition {
        let Ok(mut ep) = self.episode.lock() else {
            return Transition::None;
        };
        match ep.as_mut() {
            Some(e) => {
                e.failed = e.failed.saturating_add(1);
                Transition::None
            }
            None => {
                *ep = Some(Episode {
                    started: now,
                    failed: 1,
                });
                self.open.store(true, Ordering::Release);
                Transition::Started
            }
        }
    }

    pub fn success(&self, now: Instant) -> Transition {
        if !self.open.load(Ordering::Acquire) {
            return Transition::None;
        }
        let Ok(mut ep) = self.episode.lock() else {
            return Transition::None;
        };
        self.open.store(false, Ordering::Release);
        match ep.take() {
            Some(e) => Transition::Ended {
                failed: e.failed,
                lasted: now.saturating_duration_since(e.started),
            },
            None => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_start_and_one_end_per_episode_with_counts() {
        let t = OutageTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.success(t0), Transition::None);
        for round in 0..3u64 {
            let start = t0 + Duration::from_secs(10 * round);
            assert_eq!(t.failure(start), Transition::Started);
            let n = 1000 + round;
            for i in 1..n {
                assert_eq!(
                    t.failure(start + Duration::from_millis(i)),
                    Transition::None,
                    "no line per failed request"
                );
            }
            assert_eq!(
                t.success(start + Duration::from_secs(6)),
                Transition::Ended {
                    failed: n,
                    lasted: Duration::from_secs(6)
                }
            );
            assert_eq!(t.success(start + Duration::from_secs(7)), Transition::None);
        }
    }

    #[test]
    fn concurrent_failures_start_one_episode() {
        let t = std::sync::Arc::new(OutageTracker::default());
        let starts: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let t = t.clone();
                    s.spawn(move || {
                        (0..500)
                            .filter(|_| t.failure(Instant::now()) == Transition::Started)
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(starts, 1);
        match t.success(Instant::now()) {
            Transition::Ended { failed, .. } => assert_eq!(failed, 4000),
            other => panic!("{other:?}"),
        }
    }
}
