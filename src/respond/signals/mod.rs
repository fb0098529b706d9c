//! Breach signals with bounded memory.
//!
//! This module owns the *detection* half of Ward's response feature: it turns
//! a stream of observations (a patient read, a denial, a request, a DLP block)
//! into [`Fired`] signals when an identity crosses a configured threshold
//! inside a sliding window. It owns no I/O and no clock: every method takes
//! `now` as unix milliseconds so behaviour is deterministic and testable.
//!
//! Building blocks:
//! - [`DistinctCounter`]: distinct items (patients) per key in a sliding
//!   window, using a small HyperLogLog per sub-window (exfiltration).
//! - [`WindowCounter`]: event counts per key in a sliding window (probing,
//!   DLP blocks).
//! - [`Baseline`]: requests per interval compared with the key's own EWMA
//!   baseline (volume).
//! - [`in_window`]: time-of-day windows that may wrap midnight (off-hours).
//! - [`Signals`]: all of the above wired to a [`SignalsConfig`].
//!
//! Memory bound: every table holds at most `max_keys` keys. When a table is
//! full the *least recently seen* key is evicted (exact LRU per shard; tables
//! with at least 1024 keys are split into 16 shards by a keyed hash, each
//! holding `max_keys / 16`, so eviction is LRU within the shard). Eviction was
//! chosen over an overflow slot because an attacker spraying fresh keys then
//! only pushes out idle keys, while an overflow slot would merge unrelated
//! identities and make one client's noise fire signals for others.
//!
//! Worst-case memory per key: a [`DistinctCounter`] entry is ~200 bytes for
//! an identity reading a handful of patients and at most ~4.2 KiB (4
//! sub-windows x 1 KiB sketch) for one reading hundreds per sub-window; the
//! other tables are under 200 bytes per key (plus the key string). So the
//! hard bound for a distinct table is about `max_keys x 4.2 KiB` (~420 MiB at
//! 100_000 keys if *every* tracked identity is a heavy reader; typical use
//! is a small fraction of that).

use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

/// Default hard cap on keys per table.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Longest window/interval accepted from config (30 days). Bounds the
/// arithmetic and keeps a typo ("window_secs: 86400000") from meaning
/// "remember forever".
const MAX_WINDOW_SECS: u64 = 30 * 24 * 3600;

// ---------------------------------------------------------------------------
// Bounded LRU table
// ---------------------------------------------------------------------------

/// An exact LRU map from `str` keys to `V` with a hard capacity: the `lru` crate's map
/// (a hash index over a recency list) with the one call the signals need, a lookup that
/// creates a missing key and marks it most recently seen without allocating for a known one.
struct LruTable<V>(lru::LruCache<String, V, RandomState>);

impl<V> LruTable<V> {
    fn new(cap: usize) -> Self {
        let cap = std::num::NonZeroUsize::new(cap).unwrap_or(std::num::NonZeroUsize::MIN);
        LruTable(lru::LruCache::with_hasher(cap, RandomState::new()))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns the value for `key`, marking it most recently seen; creates it
    /// with `make` (evicting the least recently seen key when full).
    fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        self.0.get_or_insert_mut_ref(key, make)
    }

    /// Read-only lookup that does not change recency (for inspection).
    fn peek(&self, key: &str) -> Option<&V> {
        self.0.peek(key)
    }
}

/// `LruTable`s behind mutexes, sharded by a keyed hash of the key so that
/// concurrent requests for different identities rarely contend. Each call
/// takes exactly one shard lock.
struct Table<V> {
    shards: Box<[Mutex<LruTable<V>>]>,
    hasher: RandomState,
}

impl<V> Table<V> {
    fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        // Small tables stay unsharded so the cap (and LRU order) is exact.
        let n = if max_keys >= 1024 { 16 } else { 1 };
        let per = max_keys / n; // floor: the sum over shards never exceeds max_keys
        let shards = (0..n).map(|_| Mutex::new(LruTable::new(per))).collect();
        Table {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, LruTable<V>> {
        let idx = if self.shards.len() == 1 {
            0
        } else {
            (self.hasher.hash_one(key) as usize) % self.shards.len()
        };
        // A panic while holding the lock leaves counters merely stale, never
        // unsafe; keep serving rather than propagate the poison.
        self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Sliding-window geometry
// ---------------------------------------------------------------------------

/// A window of `window_ms` split into `N` sub-windows ("epochs") of
/// `ceil(window_ms / N)` ms. An event in epoch `e` counts while the current
/// epoch is `e..e+N`, so it stops counting at most `window_ms` (rounded up to
/// whole sub-windows) after it happened and at least one sub-window earlier.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    window_ms: u64,
    sub_ms: u64,
    n: u64,
}

impl Geometry {
    fn new(window_ms: u64, n: usize) -> Self {
        let window_ms = window_ms.max(1);
        let n = n.max(1) as u64;
        Geometry {
            window_ms,
            sub_ms: window_ms.div_ceil(n).max(1),
            n,
        }
    }

    fn epoch(&self, now: u64) -> u64 {
        now / self.sub_ms
    }

    /// Is a slot stamped `slot` inside the window ending in epoch `cur`?
    fn live(&self, slot: u64, cur: u64) -> bool {
        slot <= cur && cur - slot < self.n
    }
}

/// Per-key cooldown: a signal fires once per key, then stays quiet for one
/// window so a sustained attack produces one alert per window, not one per
/// request.
fn try_fire(fired_until: &mut u64, now: u64, cooldown_ms: u64) -> bool {
    if now < *fired_until {
        return false;
    }
    *fired_until = now.saturating_add(cooldown_ms);
    true
}

/// Never stamped: `live()` is false for it because it is > any real epoch.
const NO_EPOCH: u64 = u64::MAX;

// ---------------------------------------------------------------------------
// HyperLogLog
// ---------------------------------------------------------------------------

/// Register-index bits: 2^10 = 1024 one-byte registers (1 KiB), standard
/// error 1.04/sqrt(1024) ~ 3.3% once dense.
const HLL_P: u32 = 10;
const HLL_M: usize = 1 << HLL_P;
/// A sparse sketch keeps exact 32-bit hashes until it holds this many (1 KiB,
/// the size of the dense form). Below that the union across sub-windows is an
/// exact count (32-bit collisions among a few hundred ids are ~1e-5 likely),
/// which is what makes small thresholds (e.g. 150 patients) precise.
const SPARSE_MAX: usize = 256;

/// One sub-window's sketch of 32-bit item hashes.
enum Sketch {
    /// Sorted, de-duplicated hashes. `Vec::new()` does not allocate, so an
    /// untouched sub-window costs nothing beyond the enum.
    Sparse(Vec<u32>),
    Dense(Box<[u8; HLL_M]>),
}

fn hll_slot(h: u32) -> (usize, u8) {
    let idx = (h >> (32 - HLL_P)) as usize;
    let rest = h << HLL_P;
    // Rank = position of the first 1 bit in the remaining 22 bits, 1-based;
    // all-zero saturates at 23.
    let rank = rest.leading_zeros().min(32 - HLL_P) + 1;
    (idx, rank as u8)
}

impl Sketch {
    fn empty() -> Self {
        Sketch::Sparse(Vec::new())
    }

    fn clear(&mut self) {
        match self {
            // Keep the allocation: this key is likely to be active again.
            Sketch::Sparse(v) => v.clear(),
            // Free the 1 KiB: a key that was heavy once need not stay heavy.
            Sketch::Dense(_) => *self = Sketch::empty(),
        }
    }

    /// Adds `h`; returns whether the sketch changed (if not, no estimate can
    /// have changed either, which lets repeat reads skip the estimate).
    fn insert(&mut self, h: u32) -> bool {
        match self {
            Sketch::Sparse(v) => match v.binary_search(&h) {
                Ok(_) => false,
                Err(pos) if v.len() < SPARSE_MAX => {
                    v.insert(pos, h);
                    true
                }
                Err(_) => {
                    let mut regs = Box::new([0u8; HLL_M]);
                    for &x in v.iter().chain(std::iter::once(&h)) {
                        let (i, r) = hll_slot(x);
                        regs[i] = regs[i].max(r);
                    }
                    *self = Sketch::Dense(regs);
                    true
                }
            },
            Sketch::Dense(regs) => {
                let (i, r) = hll_slot(h);
                if r > regs[i] {
                    regs[i] = r;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn merge_into(&self, regs: &mut [u8; HLL_M]) {
        match self {
            Sketch::Sparse(v) => {
                for &x in v {
                    let (i, r) = hll_slot(x);
                    regs[i] = regs[i].max(r);
                }
            }
            Sketch::Dense(d) => {
                for (a, b) in regs.iter_mut().zip(d.iter()) {
                    *a = (*a).max(*b);
                }
            }
        }
    }
}

/// Exact size of the union of sorted, de-duplicated slices (k-way merge, no
/// allocation).
fn union_len(sets: &[&[u32]]) -> u64 {
    let mut pos = [0usize; DISTINCT_SUBS];
    let mut count = 0u64;
    loop {
        let mut min: Option<u32> = None;
        for (s, &p) in sets.iter().zip(pos.iter()) {
            if let Some(&x) = s.get(p) {
                min = Some(min.map_or(x, |m| m.min(x)));
            }
        }
        let Some(m) = min else { return count };
        count += 1;
        for (s, p) in sets.iter().zip(pos.iter_mut()) {
            if s.get(*p) == Some(&m) {
                *p += 1;
            }
        }
    }
}

/// Standard HyperLogLog estimate with linear counting for small
/// cardinalities (Flajolet et al.) and the 32-bit large-range correction.
fn hll_estimate(regs: &[u8; HLL_M]) -> f64 {
    let m = HLL_M as f64;
    let mut sum = 0.0f64;
    let mut zeros = 0u32;
    for &r in regs.iter() {
        sum += (-f64::from(r)).exp2();
        if r == 0 {
            zeros += 1;
        }
    }
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let raw = alpha * m * m / sum;
    let two32 = 4_294_967_296.0f64;
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / f64::from(zeros)).ln()
    } else if raw > two32 / 30.0 {
        -two32 * (1.0 - (raw / two32).min(0.999_999)).ln()
    } else {
        raw
    }
}

// ---------------------------------------------------------------------------
// DistinctCounter
// ---------------------------------------------------------------------------

/// Sub-windows per distinct-count window: the window ages out in quarters.
/// Kept small because each dense sub-window costs 1 KiB per key.
const DISTINCT_SUBS: usize = 4;

struct DistinctEntry {
    epochs: [u64; DISTINCT_SUBS],
    sketches: [Sketch; DISTINCT_SUBS],
    latest: u64,
    fired_until: u64,
}

impl DistinctEntry {
    fn new() -> Self {
        DistinctEntry {
            epochs: [NO_EPOCH; DISTINCT_SUBS],
            sketches: std::array::from_fn(|_| Sketch::empty()),
            latest: 0,
            fired_until: 0,
        }
    }

    fn estimate(&self, geo: &Geometry, cur: u64) -> u64 {
        let live = |i: usize| geo.live(self.epochs[i], cur);
        let all_sparse = (0..DISTINCT_SUBS)
            .filter(|&i| live(i))
            .all(|i| matches!(self.sketches[i], Sketch::Sparse(_)));
        if all_sparse {
            let mut sets: [&[u32]; DISTINCT_SUBS] = [&[]; DISTINCT_SUBS];
            for (i, slot) in sets.iter_mut().enumerate() {
                if let (true, Sketch::Sparse(v)) = (live(i), &self.sketches[i]) {
                    *slot = v.as_slice();
                }
            }
            return union_len(&sets);
        }
        let mut regs = [0u8; HLL_M];
        for i in (0..DISTINCT_SUBS).filter(|&i| live(i)) {
            self.sketches[i].merge_into(&mut regs);
        }
        hll_estimate(&regs).round() as u64
    }
}

/// Approximate count of distinct items per key in a sliding window, firing
/// when it reaches `threshold` (once per key per window).
///
/// Items are hashed with a per-instance random SipHash key (`RandomState`),
/// so clients cannot precompute ids that collide or skew the sketch.
pub struct DistinctCounter {
    table: Table<DistinctEntry>,
    geo: Geometry,
    threshold: u64,
    item_hasher: RandomState,
}

impl DistinctCounter {
    /// `threshold` distinct items within `window_ms` fires; at most
    /// `max_keys` keys are tracked.
    pub fn new(threshold: u64, window_ms: u64, max_keys: usize) -> Self {
        DistinctCounter {
            table: Table::new(max_keys),
            geo: Geometry::new(window_ms, DISTINCT_SUBS),
            threshold: threshold.max(1),
            item_hasher: RandomState::new(),
        }
    }

    /// Records that `key` touched `item`; returns the estimate if this
    /// observation makes the signal fire.
    pub fn observe(&self, key: &str, item: &str, now: u64) -> Option<u64> {
        self.observe_inner(key, item, now, true)
    }

    /// `may_fire = false` records without firing (and without starting the
    /// cooldown), used when another signal already fired for this call.
    fn observe_inner(&self, key: &str, item: &str, now: u64, may_fire: bool) -> Option<u64> {
        // Hash outside the lock: keeps the critical section short.
        let h = self.item_hasher.hash_one(item) as u32;
        let geo = self.geo;
        let mut shard = self.table.shard(key);
        let e = shard.get_or_insert_with(key, DistinctEntry::new);
        // A clock that steps backwards must not resurrect or clobber newer
        // sub-windows: never move below the newest epoch seen for this key.
        let cur = geo.epoch(now).max(e.latest);
        e.latest = cur;
        let slot = (cur % geo.n) as usize;
        if e.epochs[slot] != cur {
            e.epochs[slot] = cur;
            e.sketches[slot].clear();
        }
        if !e.sketches[slot].insert(h) || !may_fire || now < e.fired_until {
            return None;
        }
        let est = e.estimate(&geo, cur);
        (est >= self.threshold && try_fire(&mut e.fired_until, now, geo.window_ms)).then_some(est)
    }

    /// Current estimate for `key` (0 if unknown). Does not change recency.
    pub fn estimate(&self, key: &str, now: u64) -> u64 {
        let shard = self.table.shard(key);
        shard.peek(key).map_or(0, |e| {
            let cur = self.geo.epoch(now).max(e.latest);
            e.estimate(&self.geo, cur)
        })
    }

    /// Number of keys currently tracked (always <= `max_keys`).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------
// WindowCounter
// ---------------------------------------------------------------------------

/// Sub-windows per count window: counters are cheap, so age out in sixths.
const COUNT_SUBS: usize = 6;

struct CountEntry {
    epochs: [u64; COUNT_SUBS],
    counts: [u32; COUNT_SUBS],
    latest: u64,
    fired_until: u64,
}

impl CountEntry {
    fn new() -> Self {
        CountEntry {
            epochs: [NO_EPOCH; COUNT_SUBS],
            counts: [0; COUNT_SUBS],
            latest: 0,
            fired_until: 0,
        }
    }

    fn total(&self, geo: &Geometry, cur: u64) -> u64 {
        self.epochs
            .iter()
            .zip(self.counts.iter())
            .filter(|(&e, _)| geo.live(e, cur))
            .map(|(_, &c)| u64::from(c))
            .sum()
    }
}

/// Sliding-window event count per key, firing when the count reaches
/// `threshold` (once per key per window).
pub struct WindowCounter {
    table: Table<CountEntry>,
    geo: Geometry,
    threshold: u64,
}

impl WindowCounter {
    /// `threshold` events within `window_ms` fires; at most `max_keys` keys.
    pub fn new(threshold: u64, window_ms: u64, max_keys: usize) -> Self {
        WindowCounter {
            table: Table::new(max_keys),
            geo: Geometry::new(window_ms, COUNT_SUBS),
            threshold: threshold.max(1),
        }
    }

    /// Records one event for `key`; returns the windowed count if this event
    /// makes the signal fire.
    pub fn observe(&self, key: &str, now: u64) -> Option<u64> {
        let geo = self.geo;
        let mut shard = self.table.shard(key);
        let e = shard.get_or_insert_with(key, CountEntry::new);
        let cur = geo.epoch(now).max(e.latest);
        e.latest = cur;
        let slot = (cur % geo.n) as usize;
        if e.epochs[slot] != cur {
            e.epochs[slot] = cur;
            e.counts[slot] = 0;
        }
        e.counts[slot] = e.counts[slot].saturating_add(1);
        if now < e.fired_until {
            return None;
        }
        let total = e.total(&geo, cur);
        (total >= self.threshold && try_fire(&mut e.fired_until, now, geo.window_ms))
            .then_some(total)
    }

    /// Events counted for `key` in the window ending at `now`.
    pub fn count(&self, key: &str, now: u64) -> u64 {
        let shard = self.table.shard(key);
        shard.peek(key).map_or(0, |e| {
            let cur = self.geo.epoch(now).max(e.latest);
            e.total(&self.geo, cur)
        })
    }

    /// Number of keys currently tracked (always <= `max_keys`).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------
// Baseline
// ---------------------------------------------------------------------------

/// Parameters of a [`Baseline`].
#[derive(Clone, Copy, Debug)]
pub struct BaselineParams {
    /// Fires when the current interval's count exceeds `factor` x baseline.
    pub factor: f64,
    /// ... and also exceeds this absolute floor (quiet identities doubling
    /// from 1 to 3 requests are not an attack).
    pub min_requests: u64,
    /// Interval length in ms (e.g. 60_000 for per-minute rates).
    pub interval_ms: u64,
    /// K: the EWMA horizon in intervals (alpha = 2 / (K + 1)) and the
    /// warm-up: a key must have K completed intervals of history before it
    /// can fire, so a brand-new identity never fires on its first burst.
    pub baseline_intervals: u32,
}

struct BaselineEntry {
    interval: u64,
    count: u64,
    ewma: f64,
    /// Completed intervals observed (including idle ones since first seen).
    history: u32,
    fired_until: u64,
}

/// Longest idle gap applied to the EWMA decay; past this the baseline is ~0
/// anyway and the cap keeps `powi` in range.
const MAX_IDLE_DECAY: u64 = 100_000;

/// Per-key request rate compared with the key's own long-run baseline.
pub struct Baseline {
    table: Table<BaselineEntry>,
    p: BaselineParams,
    alpha: f64,
}

impl Baseline {
    /// Creates a baseline tracker for at most `max_keys` keys.
    pub fn new(p: BaselineParams, max_keys: usize) -> Self {
        let p = BaselineParams {
            interval_ms: p.interval_ms.max(1),
            baseline_intervals: p.baseline_intervals.max(1),
            ..p
        };
        Baseline {
            table: Table::new(max_keys),
            alpha: 2.0 / (f64::from(p.baseline_intervals) + 1.0),
            p,
        }
    }

    /// Records one request; returns `(count, threshold)` if it fires. Fires
    /// at most once per key per interval.
    pub fn observe(&self, key: &str, now: u64) -> Option<(u64, u64)> {
        let i = now / self.p.interval_ms;
        let mut shard = self.table.shard(key);
        let e = shard.get_or_insert_with(key, || BaselineEntry {
            interval: i,
            count: 0,
            ewma: 0.0,
            history: 0,
            fired_until: 0,
        });
        if i > e.interval {
            // Close the interval that just ended...
            let c = e.count as f64;
            e.ewma = if e.history == 0 {
                c
            } else {
                self.alpha * c + (1.0 - self.alpha) * e.ewma
            };
            // ...and the idle (zero-request) intervals in between.
            let idle = (i - e.interval - 1).min(MAX_IDLE_DECAY);
            e.ewma *= (1.0 - self.alpha).powi(idle as i32);
            e.history = e
                .history
                .saturating_add(1)
                .saturating_add(u32::try_from(idle).unwrap_or(u32::MAX));
            e.interval = i;
            e.count = 0;
        }
        // (i < e.interval: the clock stepped back; count it in the current
        // interval rather than rewriting history.)
        e.count = e.count.saturating_add(1);
        if e.history < self.p.baseline_intervals || now < e.fired_until {
            return None;
        }
        let limit = self.p.factor * e.ewma;
        if (e.count as f64) > limit && e.count > self.p.min_requests {
            e.fired_until = e
                .interval
                .saturating_add(1)
                .saturating_mul(self.p.interval_ms);
            let threshold = (limit.ceil() as u64).max(self.p.min_requests);
            return Some((e.count, threshold));
        }
        None
    }

    /// Number of keys currently tracked (always <= `max_keys`).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------
// Off-hours
// ---------------------------------------------------------------------------

const MINUTES_PER_DAY: i64 = 24 * 60;

/// Is `now_ms` (unix ms, UTC) inside the local time-of-day window
/// `[start, end)` (minutes after local midnight) at `utc_offset_minutes`?
///
/// `start > end` wraps midnight (20:00-06:00 means 20:00..24:00 plus
/// 00:00..06:00). `start == end` is an empty window (config rejects it).
pub fn in_window(
    now_ms: u64,
    start_minute_of_day: u32,
    end_minute_of_day: u32,
    utc_offset_minutes: i32,
) -> bool {
    let utc_minutes = (now_ms / 60_000) as i64;
    let local = (utc_minutes + i64::from(utc_offset_minutes)).rem_euclid(MINUTES_PER_DAY);
    let (s, e) = (i64::from(start_minute_of_day), i64::from(end_minute_of_day));
    if s <= e {
        s <= local && local < e
    } else {
        local >= s || local < e
    }
}

/// Parses "HH:MM" (24h) into minutes after midnight.
fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("time {s:?}: expected HH:MM"))?;
    // Strict two-digit fields: `u32::from_str` alone would accept "+1".
    let two_digits = |f: &str| f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(format!("time {s:?}: expected HH:MM"));
    }
    let h: u32 = h.parse().map_err(|_| format!("time {s:?}: bad hour"))?;
    let m: u32 = m.parse().map_err(|_| format!("time {s:?}: bad minute"))?;
    if h > 23 || m > 59 {
        return Err(format!("time {s:?}: out of range"));
    }
    Ok(h * 60 + m)
}

/// Parses "+HH:MM" / "-HH:MM" / "Z" into minutes east of UTC.
fn parse_utc_offset(s: &str) -> Result<i32, String> {
    if s == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(format!("utc_offset {s:?}: expected +HH:MM or -HH:MM")),
    };
    let mins = parse_hhmm(rest).map_err(|_| format!("utc_offset {s:?}: expected +HH:MM"))?;
    if mins > 14 * 60 {
        return Err(format!("utc_offset {s:?}: beyond +-14:00"));
    }
    Ok(sign * mins as i32)
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

fn default_utc_offset() -> String {
    "+00:00".to_owned()
}

/// `signals:` section of the gateway config. Every signal is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// Hard cap on keys per table (default 100_000).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    #[serde(default)]
    pub exfiltration: Option<ExfiltrationConfig>,
    #[serde(default)]
    pub probing: Option<ProbingConfig>,
    #[serde(default)]
    pub volume: Option<VolumeConfig>,
    #[serde(default)]
    pub dlp: Option<DlpConfig>,
    #[serde(default)]
    pub off_hours: Option<OffHoursConfig>,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            max_keys: DEFAULT_MAX_KEYS,
            exfiltration: None,
            probing: None,
            volume: None,
            dlp: None,
            off_hours: None,
        }
    }
}

/// Distinct patients read by one identity within a window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExfiltrationConfig {
    pub distinct_patients: u64,
    pub window_secs: u64,
}

/// Denials per key (IP or identity) within a window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbingConfig {
    pub denials: u64,
    pub window_secs: u64,
}

/// Request rate far above the identity's own baseline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub factor: f64,
    pub min_requests: u64,
    pub interval_secs: u64,
    pub baseline_intervals: u32,
}

/// DLP blocks per identity within a window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    pub blocked: u64,
    pub window_secs: u64,
}

/// A (usually lower) distinct-patient threshold for listed identities during
/// a local time-of-day window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffHoursConfig {
    /// Keys this applies to: exact matches, or prefixes ending in `*`
    /// (`"sub:iss|*"`).
    pub identities: Vec<String>,
    /// Local start "HH:MM".
    pub start: String,
    /// Local end "HH:MM" (exclusive); may be earlier than start (wraps).
    pub end: String,
    /// "+HH:MM", "-HH:MM" or "Z" (default "+00:00"). A fixed offset: DST is
    /// not applied, so pick the offset that errs towards a longer window.
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
    pub distinct_patients: u64,
    pub window_secs: u64,
}

fn check_window(name: &str, secs: u64) -> Result<u64, String> {
    if secs == 0 || secs > MAX_WINDOW_SECS {
        return Err(format!(
            "signals.{name}: window must be 1..={MAX_WINDOW_SECS} seconds"
        ));
    }
    Ok(secs * 1000)
}

fn check_threshold(name: &str, v: u64) -> Result<u64, String> {
    if v == 0 {
        return Err(format!("signals.{name}: threshold must be > 0"));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/// Which signal fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Exfiltration,
    Probing,
    Volume,
    Dlp,
    OffHours,
}

impl SignalKind {
    /// Stable snake_case name (for logs, metrics labels and events).
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Exfiltration => "exfiltration",
            SignalKind::Probing => "probing",
            SignalKind::Volume => "volume",
            SignalKind::Dlp => "dlp",
            SignalKind::OffHours => "off_hours",
        }
    }
}

/// A signal that crossed its threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fired {
    pub signal: SignalKind,
    pub key: String,
    /// The observed value (distinct patients, events, requests this interval).
    pub value: u64,
    /// The threshold it crossed.
    pub threshold: u64,
}

struct OffHours {
    exact: HashSet<String>,
    prefixes: Vec<String>,
    start: u32,
    end: u32,
    offset: i32,
    counter: DistinctCounter,
    threshold: u64,
}

impl OffHours {
    fn applies(&self, key: &str, now: u64) -> bool {
        (self.exact.contains(key) || self.prefixes.iter().any(|p| key.starts_with(p.as_str())))
            && in_window(now, self.start, self.end, self.offset)
    }
}

/// All configured signals. Methods take `&self` and are safe to call from
/// many tasks; each call takes at most one lock per signal it feeds.
pub struct Signals {
    exfiltration: Option<(DistinctCounter, u64)>,
    probing: Option<(WindowCounter, u64)>,
    volume: Option<(Baseline, u64)>,
    dlp: Option<(WindowCounter, u64)>,
    off_hours: Option<OffHours>,
}

impl Signals {
    /// Validates `cfg` and builds the tables (empty; memory grows with keys
    /// seen, up to `max_keys` per table).
    pub fn new(cfg: &SignalsConfig) -> Result<Signals, String> {
        if cfg.max_keys == 0 {
            return Err("signals.max_keys must be > 0".into());
        }
        let max = cfg.max_keys;
        let exfiltration = match &cfg.exfiltration {
            None => None,
            Some(c) => {
                let t = check_threshold("exfiltration.distinct_patients", c.distinct_patients)?;
                let w = check_window("exfiltration", c.window_secs)?;
                Some((DistinctCounter::new(t, w, max), t))
            }
        };
        let probing = match &cfg.probing {
            None => None,
            Some(c) => {
                let t = check_threshold("probing.denials", c.denials)?;
                let w = check_window("probing", c.window_secs)?;
                Some((WindowCounter::new(t, w, max), t))
            }
        };
        let dlp = match &cfg.dlp {
            None => None,
            Some(c) => {
                let t = check_threshold("dlp.blocked", c.blocked)?;
                let w = check_window("dlp", c.window_secs)?;
                Some((WindowCounter::new(t, w, max), t))
            }
        };
        let volume = match &cfg.volume {
            None => None,
            Some(c) => {
                if !c.factor.is_finite() || c.factor < 1.0 {
                    return Err("signals.volume.factor must be a finite number >= 1".into());
                }
                if c.baseline_intervals == 0 {
                    return Err("signals.volume.baseline_intervals must be > 0".into());
                }
                let interval_ms = check_window("volume.interval", c.interval_secs)?;
                let p = BaselineParams {
                    factor: c.factor,
                    min_requests: c.min_requests,
                    interval_ms,
                    baseline_intervals: c.baseline_intervals,
                };
                Some((Baseline::new(p, max), interval_ms))
            }
        };
        let off_hours = match &cfg.off_hours {
            None => None,
            Some(c) => {
                if c.identities.is_empty() {
                    return Err("signals.off_hours.identities must not be empty".into());
                }
                let start = parse_hhmm(&c.start).map_err(|e| format!("signals.off_hours: {e}"))?;
                let end = parse_hhmm(&c.end).map_err(|e| format!("signals.off_hours: {e}"))?;
                if start == end {
                    return Err("signals.off_hours: start and end must differ".into());
                }
                let offset = parse_utc_offset(&c.utc_offset)
                    .map_err(|e| format!("signals.off_hours: {e}"))?;
                let t = check_threshold("off_hours.distinct_patients", c.distinct_patients)?;
                let w = check_window("off_hours", c.window_secs)?;
                let mut exact = HashSet::new();
                let mut prefixes = Vec::new();
                for id in &c.identities {
                    match id.strip_suffix('*') {
                        Some(p) => prefixes.push(p.to_owned()),
                        None => {
                            exact.insert(id.clone());
                        }
                    }
                }
                Some(OffHours {
                    exact,
                    prefixes,
                    start,
                    end,
                    offset,
                    counter: DistinctCounter::new(t, w, max),
                    threshold: t,
                })
            }
        };
        Ok(Signals {
            exfiltration,
            probing,
            volume,
            dlp,
            off_hours,
        })
    }

    /// `key` read `patient`. Feeds exfiltration and, for listed identities
    /// inside the off-hours window, the off-hours counter.
    ///
    /// Returns at most one signal per call. If both would fire, off-hours
    /// (the more specific) wins and exfiltration is recorded without firing;
    /// it fires on the next new patient for that key if still above
    /// threshold.
    pub fn observe_patient(&self, key: &str, patient: &str, now: u64) -> Option<Fired> {
        let mut fired = None;
        if let Some(o) = self.off_hours.as_ref().filter(|o| o.applies(key, now)) {
            if let Some(v) = o.counter.observe(key, patient, now) {
                fired = Some(Fired {
                    signal: SignalKind::OffHours,
                    key: key.to_owned(),
                    value: v,
                    threshold: o.threshold,
                });
            }
        }
        if let Some((c, t)) = &self.exfiltration {
            if let Some(v) = c.observe_inner(key, patient, now, fired.is_none()) {
                fired = Some(Fired {
                    signal: SignalKind::Exfiltration,
                    key: key.to_owned(),
                    value: v,
                    threshold: *t,
                });
            }
        }
        fired
    }

    /// `key` (an IP or an identity) was denied.
    pub fn observe_denial(&self, key: &str, now: u64) -> Option<Fired> {
        let (c, t) = self.probing.as_ref()?;
        c.observe(key, now).map(|v| Fired {
            signal: SignalKind::Probing,
            key: key.to_owned(),
            value: v,
            threshold: *t,
        })
    }

    /// `key` made a request.
    pub fn observe_request(&self, key: &str, now: u64) -> Option<Fired> {
        let (b, _) = self.volume.as_ref()?;
        b.observe(key, now).map(|(v, t)| Fired {
            signal: SignalKind::Volume,
            key: key.to_owned(),
            value: v,
            threshold: t,
        })
    }

    /// A response to `key` was blocked by DLP.
    pub fn observe_dlp_block(&self, key: &str, now: u64) -> Option<Fired> {
        let (c, t) = self.dlp.as_ref()?;
        c.observe(key, now).map(|v| Fired {
            signal: SignalKind::Dlp,
            key: key.to_owned(),
            value: v,
            threshold: *t,
        })
    }

    /// `(threshold, window ms)` of a windowed signal (exfiltration, probing, dlp,
    /// off_hours), for counting it in Redis with the same numbers (`shared.rs`).
    pub fn window_of(&self, kind: SignalKind) -> Option<(u64, u64)> {
        match kind {
            SignalKind::Exfiltration => self
                .exfiltration
                .as_ref()
                .map(|(c, t)| (*t, c.geo.window_ms)),
            SignalKind::Probing => self.probing.as_ref().map(|(c, t)| (*t, c.geo.window_ms)),
            SignalKind::Dlp => self.dlp.as_ref().map(|(c, t)| (*t, c.geo.window_ms)),
            SignalKind::OffHours => self
                .off_hours
                .as_ref()
                .map(|o| (o.threshold, o.counter.geo.window_ms)),
            SignalKind::Volume => None,
        }
    }

    /// The volume signal's parameters, when configured.
    pub fn volume_params(&self) -> Option<BaselineParams> {
        self.volume.as_ref().map(|(b, _)| b.p)
    }

    /// Does the off-hours threshold apply to `key` at `now`?
    pub fn off_hours_applies(&self, key: &str, now: u64) -> bool {
        self.off_hours.as_ref().is_some_and(|o| o.applies(key, now))
    }

    /// Total keys held across all tables (for a gauge).
    pub fn tracked_keys(&self) -> usize {
        self.exfiltration.as_ref().map_or(0, |(c, _)| c.len())
            + self.probing.as_ref().map_or(0, |(c, _)| c.len())
            + self.volume.as_ref().map_or(0, |(c, _)| c.len())
            + self.dlp.as_ref().map_or(0, |(c, _)| c.len())
            + self.off_hours.as_ref().map_or(0, |o| o.counter.len())
    }
}

#[cfg(test)]
mod tests;
