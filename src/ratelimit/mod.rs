//! Rate-limit backends behind the `rate_limit` policy (`policy/rate_limit.rs`): the local
//! governor limiter with a bounded key table, and the Redis GCRA shared by replicas. Also
//! the housekeeping task that keeps the local key tables small.

pub mod cluster;
pub mod local;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::Quota;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use std::num::NonZeroU32;
use tokio::sync::{watch, Notify};

use local::LocalLimiter;

/// A local limiter with the metric children that report on it.
pub struct Tracked {
    pub limiter: Arc<LocalLimiter>,
    pub keys: IntGauge,
    pub overflow: IntCounter,
    /// Overflow count already added to `overflow`.
    reported: std::sync::atomic::AtomicU64,
}

/// Local limiters by definition (route, limit, quota, key cap), handed from one config
/// generation to the next: a reload that leaves a limit unchanged keeps its buckets, so
/// reloading is never a way to reset anyone's limit.
#[derive(Default)]
pub struct Carry {
    pub previous: std::collections::HashMap<String, Arc<LocalLimiter>>,
    pub current: std::collections::HashMap<String, Arc<LocalLimiter>>,
}

impl Carry {
    /// The limiter for `definition`: the previous generation's if it had the same one.
    pub fn get_or_make(
        &mut self,
        definition: String,
        make: impl FnOnce() -> LocalLimiter,
    ) -> Arc<LocalLimiter> {
        let l = self
            .previous
            .remove(&definition)
            .unwrap_or_else(|| Arc::new(make()));
        self.current.insert(definition, l.clone());
        l
    }
}

/// Runs `retain_recent` + `shrink_to_fit` on every registered limiter on a timer, and
/// early when a limiter's key table fills up.
pub struct Housekeeper {
    limiters: Mutex<Vec<Weak<Tracked>>>,
    pub wake: Notify,
}

/// Often enough that idle keys leave well before a flood could fill a table, rarely
/// enough that the sweep (a few ms per 100k keys) costs nothing measurable.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const EARLY_SWEEP_GAP: Duration = Duration::from_secs(1);

impl Housekeeper {
    pub fn start(stop: watch::Receiver<bool>) -> Arc<Housekeeper> {
        let hk = Arc::new(Housekeeper {
            limiters: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        let weak = Arc::downgrade(&hk);
        tokio::spawn(async move {
            let mut stop = stop;
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                let Some(hk) = weak.upgrade() else { return };
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = hk.wake.notified() => {
                        // A table kept full by a flood would otherwise wake the sweep on
                        // every request: early sweeps at most once a second.
                        let next = last + EARLY_SWEEP_GAP;
                        tokio::select! {
                            _ = tokio::time::sleep_until(next) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    _ = stop.changed() => return,
                }
                hk.sweep();
                last = tokio::time::Instant::now();
                drop(hk);
            }
        });
        hk
    }

    pub fn register(
        &self,
        limiter: Arc<LocalLimiter>,
        keys: IntGauge,
        overflow: IntCounter,
    ) -> Arc<Tracked> {
        // A limiter carried over from an earlier generation has already reported its
        // overflow count.
        let reported = std::sync::atomic::AtomicU64::new(limiter.overflowed());
        let t = Arc::new(Tracked {
            limiter,
            keys,
            overflow,
            reported,
        });
        if let Ok(mut v) = self.limiters.lock() {
            v.retain(|w| w.strong_count() > 0);
            v.push(Arc::downgrade(&t));
        }
        t
    }

    pub fn sweep(&self) {
        let live: Vec<Arc<Tracked>> = match self.limiters.lock() {
            Ok(v) => v.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for t in live {
            t.limiter.housekeep();
            t.report();
        }
    }
}

impl Tracked {
    pub fn report(&self) {
        use std::sync::atomic::Ordering;
        self.keys
            .set(i64::try_from(self.limiter.keys()).unwrap_or(i64::MAX));
        let now = self.limiter.overflowed();
        let before = self.reported.swap(now, Ordering::Relaxed);
        self.overflow.inc_by(now.saturating_sub(before));
    }
}

/// The unit a rate is written in (`rate: 10` `per: minute`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Second,
    Minute,
    Hour,
}

/// The GCRA quota of `rate` cells per `per` with `burst` (default `rate`), and its
/// emission interval (one cell every `per / rate`).
pub fn quota(rate: u32, per: Per, burst: Option<u32>) -> Result<(Quota, Duration), String> {
    let nz = |n: u32| {
        NonZeroU32::new(n).ok_or_else(|| "rate and burst must be greater than 0".to_owned())
    };
    let interval = per.duration() / nz(rate)?.get();
    let q = Quota::with_period(interval)
        .ok_or("rate too high")?
        .allow_burst(nz(burst.unwrap_or(rate))?);
    Ok((q, interval))
}

impl Per {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        })
    }
}
