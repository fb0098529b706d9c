//! The local rate-limit backend: a governor GCRA limiter per (route, limit), keyed by a
//! 64-bit keyed hash of the client key, with a bounded key table.
//!
//! Why a custom state store: governor's keyed stores grow with every distinct key, and a
//! flood of random keys (spoofed `X-Api-Key`s, rotating source addresses) would grow them
//! until the process runs out of memory. This store holds at most `max_keys` keys. When it
//! is full, a key it does not already track shares one overflow bucket (with the limit's
//! own quota) with every other untracked key: clients already tracked keep their own
//! buckets, and a random-key flood is limited as one client. Stale keys (whose bucket is
//! indistinguishable from a fresh one) are dropped by [`LocalLimiter::housekeep`], which
//! the gateway runs on a timer and whenever the table fills.
//!
//! Keys are hashed with a per-process random SipHash key before they are stored, so the
//! table never holds an identity (or a patient id) in clear, and an attacker cannot craft
//! keys that collide. Two real keys colliding on 64 bits is negligible (about 3·10⁻⁸ for
//! a million keys) and would only make them share a bucket.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

/// The keys are already keyed SipHash outputs: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = DashMap<u64, InMemoryState, BuildHasherDefault<PassThrough>>;

/// Keyed GCRA state with a hard cap on the number of keys.
pub struct CappedStore {
    map: Map,
    cap: usize,
    stats: Arc<Stats>,
    overflow: InMemoryState,
}

/// Counters shared with the [`LocalLimiter`] (governor owns the store and gives no
/// accessor to it).
#[derive(Default)]
struct Stats {
    /// Key count: exact after housekeeping, and in between off by at most the inserts
    /// racing with a check.
    len: AtomicUsize,
    overflowed: AtomicU64,
}

impl CappedStore {
    fn new(cap: usize, stats: Arc<Stats>) -> Self {
        CappedStore {
            map: Map::default(),
            cap,
            stats,
            overflow: InMemoryState::default(),
        }
    }
}

impl StateStore for CappedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.stats.len.load(Ordering::Relaxed) >= self.cap {
            self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = self.map.entry(*key).or_insert_with(|| {
            self.stats.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// The theoretical arrival time stored in a state, read without changing it (governor
/// only exposes the compare-and-swap update; a closure that always declines reads it).
fn tat(state: &InMemoryState) -> Option<Nanos> {
    match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
        Ok(()) => None,
        Err(prev) => prev,
    }
}

impl ShrinkableKeyedStateStore<u64> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map
            .retain(|_, state| tat(state).is_some_and(|t| t > drop_below));
        self.stats.len.store(self.map.len(), Ordering::Relaxed);
    }
    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }
    fn len(&self) -> usize {
        self.stats.len.load(Ordering::Relaxed)
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a check refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// How long until the same request would be admitted.
    pub retry_after: Duration,
}

/// One limit's local state.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, CappedStore, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    hasher: std::collections::hash_map::RandomState,
    cap: usize,
    stats: Arc<Stats>,
}

impl LocalLimiter<DefaultClock> {
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        Self::with_clock(quota, max_keys, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    pub fn with_clock(quota: Quota, max_keys: usize, clock: C) -> Self {
        let cap = max_keys.max(1);
        let stats = Arc::new(Stats::default());
        LocalLimiter {
            limiter: RateLimiter::new(quota, CappedStore::new(cap, stats.clone()), clock.clone()),
            clock,
            hasher: std::collections::hash_map::RandomState::new(),
            cap,
            stats,
        }
    }

    /// Take `cost` cells for `key`, or say how long to wait. A cost above the burst can
    /// never be admitted (config validation refuses it); it is refused rather than
    /// panicking.
    pub fn check(&self, key: &[u8], cost: NonZeroU32) -> Result<(), Denied> {
        // The stored form of a key: a keyed hash, never the key itself.
        let k = self.hasher.hash_one(key);
        match self.limiter.check_key_n(&k, cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Denied {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            Err(_insufficient) => Err(Denied {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Drop keys whose buckets are full again, and give the memory back.
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_full(&self) -> bool {
        self.keys() >= self.cap
    }

    /// Checks that went to the shared overflow bucket since start.
    pub fn overflowed(&self) -> u64 {
        self.stats.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limiter(
        per_minute: u32,
        burst: u32,
        cap: usize,
    ) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let q = Quota::per_minute(nz(per_minute)).allow_burst(nz(burst));
        (LocalLimiter::with_clock(q, cap, clock.clone()), clock)
    }

    #[test]
    fn burst_then_refill_on_the_fake_clock() {
        let (l, clock) = limiter(60, 3, 100);
        for _ in 0..3 {
            assert!(l.check(b"a", nz(1)).is_ok());
        }
        let d = l.check(b"a", nz(1)).unwrap_err();
        assert_eq!(d.retry_after, Duration::from_secs(1));
        // Another key has its own bucket.
        assert!(l.check(b"b", nz(1)).is_ok());
        clock.advance(Duration::from_millis(999));
        assert!(l.check(b"a", nz(1)).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(l.check(b"a", nz(1)).is_ok());
        assert!(l.check(b"a", nz(1)).is_err());
    }

    #[test]
    fn cost_takes_several_cells_and_never_more_than_the_burst() {
        let (l, clock) = limiter(60, 10, 100);
        assert!(l.check(b"a", nz(5)).is_ok());
        assert!(l.check(b"a", nz(5)).is_ok());
        let d = l.check(b"a", nz(5)).unwrap_err();
        assert_eq!(d.retry_after, Duration::from_secs(5));
        clock.advance(Duration::from_secs(4));
        assert!(l.check(b"a", nz(5)).is_err());
        assert!(l.check(b"a", nz(4)).is_ok());
        // Over the burst: can never pass, and does not panic.
        assert!(l.check(b"z", nz(11)).is_err());
    }

    #[test]
    fn key_cap_sends_new_keys_to_one_shared_bucket() {
        let (l, clock) = limiter(60, 2, 3);
        for k in [b"a", b"b", b"c"] {
            assert!(l.check(k, nz(1)).is_ok());
        }
        assert_eq!(l.keys(), 3);
        assert!(l.is_full());
        // A flood of new keys shares one bucket of burst 2.
        let admitted = (0..1000u32)
            .filter(|i| l.check(&i.to_be_bytes(), nz(1)).is_ok())
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(l.overflowed(), 1000);
        assert_eq!(l.keys(), 3, "the table never grows past the cap");
        // Tracked keys are unaffected by the flood.
        assert!(l.check(b"a", nz(1)).is_ok());
        assert!(l.check(b"a", nz(1)).is_err());
        // Once their buckets are full again, housekeeping frees the table (governor keeps
        // a key one emission interval longer than strictly needed).
        clock.advance(Duration::from_secs(10));
        l.housekeep();
        assert_eq!(l.keys(), 0);
        assert!(l.check(b"new", nz(1)).is_ok());
        assert_eq!(l.keys(), 1);
    }

    #[test]
    fn housekeeping_keeps_keys_still_limited() {
        let (l, clock) = limiter(60, 5, 100);
        assert!(l.check(b"busy", nz(5)).is_ok());
        assert!(l.check(b"idle", nz(1)).is_ok());
        clock.advance(Duration::from_secs(3));
        l.housekeep();
        // `idle` is back to a full bucket and forgotten; `busy` still owes two cells, so
        // forgetting it would hand it a fresh burst.
        assert_eq!(l.keys(), 1);
        assert!(l.check(b"busy", nz(4)).is_err());
        assert!(l.check(b"busy", nz(3)).is_ok());
    }
}
